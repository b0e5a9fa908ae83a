"""Generated documents must match the code they are generated from."""

from __future__ import annotations

from support import repo_root

from functions.events import RECORD_SCHEMA_PATH, render_record_schema
from functions.settings import markdown_table


def test_readme_configuration_table_matches_settings() -> None:
    readme = (repo_root() / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = readme.index("\n<!-- settings-table:end -->")
    assert readme[start:end] == markdown_table(), (
        "README's configuration table is stale: paste the output of `python -m functions.settings`"
    )


def test_record_schema_file_is_generated_from_the_model() -> None:
    assert RECORD_SCHEMA_PATH.read_bytes() == render_record_schema() + b"\n", (
        "docs/schemas/view-record.json is stale: run `python -m functions.events`"
    )
