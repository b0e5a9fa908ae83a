"""The ClickHouse DSN has no default in Settings: a deployment names its database (or its file),
and a process without one stops at start with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import JWT_SECRET, repo_root

from functions.settings import Settings, get_settings

MISSING = "CLICKHOUSE_DSN (or CLICKHOUSE_DSN_FILE) is not set"


def _environment_without_dsn() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKHOUSE_DSN")}
    return {**env, "JWT_SECRET": JWT_SECRET}


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "functions.sink"],
        # functions-framework imports functions/main.py before it serves: the check runs there.
        [
            str(Path(sys.executable).with_name("functions-framework")),
            "--source=functions/main.py",
            "--target=ingest",
            "--asgi",
            "--port=0",
        ],
    ],
    ids=["consumer-loop", "functions-framework"],
)
def test_a_function_without_dsn_exits_at_start_with_one_line(command: list[str]) -> None:
    result = subprocess.run(
        command,
        cwd=repo_root(),
        env=_environment_without_dsn(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"invalid configuration: {MISSING}: give "
        "http(s)://user:password@host:8123, or chdb:///<dir> for the embedded engine"
    ]


def test_the_dsn_is_read_from_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dsn_file = tmp_path / "CLICKHOUSE_DSN"
    dsn_file.write_text("http://views:s3cret@clickhouse:8123\n")  # as a Secret's file ends
    monkeypatch.delenv("CLICKHOUSE_DSN")
    monkeypatch.setenv("CLICKHOUSE_DSN_FILE", str(dsn_file))
    settings = Settings(jwt_secret=JWT_SECRET)
    assert settings.clickhouse_dsn == "http://views:s3cret@clickhouse:8123"


def test_the_sentry_dsn_is_read_from_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # OpenFaaS hands secrets to a function as files only (/var/openfaas/secrets/<key>).
    dsn_file = tmp_path / "SENTRY_DSN"
    dsn_file.write_text("https://public@sentry.example/1\n")
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    monkeypatch.setenv("SENTRY_DSN_FILE", str(dsn_file))
    assert Settings(jwt_secret=JWT_SECRET).sentry_dsn == "https://public@sentry.example/1"
    monkeypatch.delenv("SENTRY_DSN_FILE")
    assert Settings(jwt_secret=JWT_SECRET).sentry_dsn is None


def test_the_environment_wins_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_DSN", "http://clickhouse:8123")
    monkeypatch.setenv("CLICKHOUSE_DSN_FILE", "/nonexistent")
    assert Settings(jwt_secret=JWT_SECRET).clickhouse_dsn == "http://clickhouse:8123"


def test_errors_name_the_variable_never_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_DSN", "ftp://views:s3cret@clickhouse")
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert str(exited.value).startswith("invalid configuration: CLICKHOUSE_DSN: String should")
    assert "s3cret" not in str(exited.value)


def test_a_missing_dsn_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLICKHOUSE_DSN")
    monkeypatch.setenv("CLICKHOUSE_DSN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match=r"CLICKHOUSE_DSN_FILE .*absent: No such file"):
        Settings(jwt_secret=JWT_SECRET)
