"""A single-node KRaft Apache Kafka broker for local runs and tests, from Maven Central jars.

    python infra/localkafka.py fetch
    python infra/localkafka.py run --lock .local/stack.lock --data .local/kafka --port 9092 \
        --ready-url http://127.0.0.1:8080/readyz -- <command ...>

``fetch`` copies the broker jars (``infra/kafka/pom.xml``) into a cache outside git. ``run`` is
the supervisor of ``make run``: it takes the stack's lock (``stacklock.py``) before touching
anything, formats the data folder on first use, starts the broker and waits until the broker it
started answers, creates the topics, runs the command with ``KAFKA_BOOTSTRAP_SERVERS`` set and
prints "ready" once ``--ready-url`` answers 200. On Ctrl-C, SIGTERM or SIGHUP it stops the
command, then the broker, and returns only once both have exited, so that the data folders are
free again when the prompt is back. Tests use ``LocalKafka`` directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import psutil
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from stacklock import StackBusy, StackLock

INFRA = Path(__file__).resolve().parent
POM = INFRA / "kafka" / "pom.xml"
LOG_CONFIG = INFRA / "kafka" / "log4j2.yaml"


def kafka_version() -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", namespace)
    assert node is not None and node.text
    return node.text


def jar_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "watch-progress" / f"kafka-{kafka_version()}" / "libs"


def fetch_jars() -> Path:
    """The folder of broker jars, downloaded by Maven on first use."""
    libs = jar_cache()
    complete = libs / ".complete"
    if complete.exists():
        return libs
    print(f"fetching Apache Kafka {kafka_version()} from Maven Central into {libs}", flush=True)
    shutil.rmtree(libs, ignore_errors=True)
    subprocess.run(
        [
            *("mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(POM)),
            *(
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ),
        ],
        check=True,
    )
    complete.touch()
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerFailed(RuntimeError):
    """The broker did not start, or stopped; the message says why in one line."""


class PortTaken(BrokerFailed):
    """Another process listens on a port the stack needs; the message names it."""


def _describe_process(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        argv, cwd = process.cmdline(), process.cwd()
    except psutil.Error:
        return f"pid {pid}"
    for arg in argv:
        if arg.startswith("-Dkafka.logs.dir="):
            return f"the Kafka broker of {arg.partition('=')[2]} (pid {pid})"
    return f"`{' '.join(argv)[:120]}` in {cwd} (pid {pid})"


def port_holder(port: int) -> str | None:
    """Who listens on 127.0.0.1:``port``, in words (its checkout or data folder); None if free."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # some systems list sockets to their owner only
        connections = []
    for connection in connections:
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid
        ):
            return _describe_process(connection.pid)
    return "another process"


def refuse_taken_port(port: int) -> None:
    holder = port_holder(port)
    if holder is not None:
        raise PortTaken(f"port {port} is taken by {holder}")


# The first line of a Java failure in the broker's log: "...Exception: what went wrong".
_JAVA_FAILURE = re.compile(r"\b((?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error|Fault)\b.*)")
# What the broker logs when it truncated a damaged log segment to start anyway.
_REPAIRED = re.compile(r"partition=([^,\]]+).*?(Corruption found in segment [^(]*)")


def _first_match(log: Path, start: int, pattern: re.Pattern[str]) -> str | None:
    """The first match of ``pattern`` in the broker's log after byte ``start``, on one line."""
    try:
        with log.open("rb") as lines:
            lines.seek(start)
            for line in lines:
                found = pattern.search(line.decode(errors="replace"))
                if found:
                    return ": ".join(part.strip() for part in found.groups())[:300]
    except OSError:
        return None
    return None


def _offsets_probe(bootstrap_servers: str, group_id: str) -> Consumer:
    # Never subscribes, so it reads offsets without joining (or disturbing) the group.
    return Consumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": group_id, "enable.auto.commit": False}
    )


def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """The next offset to be written, per partition of ``topic``."""
    probe = _offsets_probe(bootstrap_servers, "end-offsets-probe")
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        probe.close()


def committed_offsets(bootstrap_servers: str, group_id: str, topic: str) -> dict[int, int]:
    """The offset ``group_id`` committed per partition of ``topic`` (0 where it committed none)."""
    probe = _offsets_probe(bootstrap_servers, group_id)
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in committed}
    finally:
        probe.close()


def group_lag(bootstrap_servers: str, group_id: str, topic: str) -> int:
    """Records of ``topic`` that ``group_id`` has not committed yet."""
    ends = end_offsets(bootstrap_servers, topic)
    committed = committed_offsets(bootstrap_servers, group_id, topic)
    return sum(end - committed.get(p, 0) for p, end in ends.items())


def read_records(
    bootstrap_servers: str, topic: str, count: int | None = None, timeout: float = 20.0
) -> list[Message]:
    """Up to ``count`` records of ``topic`` from its start (default: all it holds now)."""
    if count is None:
        count = sum(end_offsets(bootstrap_servers, topic).values())
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


class LocalKafka:
    """One broker+controller process on 127.0.0.1 with its data in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int, controller_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.controller_port = controller_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this start's part of broker.out begins

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        log_dir = self.data_dir / "log"
        config = self.data_dir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={log_dir}",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    # A new group's first rebalance would wait 3 s for more members by default.
                    "group.initial.rebalance.delay.ms=0",
                ]
            )
            + "\n"
        )
        return config

    def _java(self, libs: Path, main_class: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xmx512m",
            f"-Dlog4j2.configurationFile={LOG_CONFIG}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{libs}/*",
            main_class,
            *args,
        ]

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.out"

    def cluster_id(self) -> str:
        """The cluster id formatted into this data folder: the marker of this broker."""
        meta = (self.data_dir / "log" / "meta.properties").read_text()
        found = re.search(r"^cluster\.id=(.+)$", meta, re.MULTILINE)
        if found is None:
            raise BrokerFailed(f"no cluster.id in {self.data_dir / 'log' / 'meta.properties'}")
        return found.group(1).strip()

    def start(self, timeout_seconds: float = 60) -> None:
        """Format on first use, start the broker and wait until this broker answers."""
        self.launch()
        self.wait_ready(timeout_seconds)

    def launch(self, pass_fds: tuple[int, ...] = ()) -> None:
        """Format on first use and start the broker process; ``pass_fds`` stay open in it (a
        lock it must hold while it runs)."""
        refuse_taken_port(self.port)
        libs = fetch_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "log" / "meta.properties").exists():
            formatted = subprocess.run(
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    str(uuid.uuid4()),
                    "-c",
                    str(config),
                ),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise BrokerFailed(
                    f"formatting {self.data_dir} failed: "
                    + (formatted.stderr or formatted.stdout).strip()[-300:]
                )
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals reach its supervisor, which stops it last
            pass_fds=pass_fds,
        )

    def failure(self) -> str:
        """Why the broker process exited, in one line."""
        assert self.process is not None
        holder = port_holder(self.port)  # the broker is gone: whoever listens is someone else
        if holder is not None:
            return f"port {self.port} is taken by {holder}"
        reason = self._logged_failure()
        return (
            f"the Kafka broker on {self.data_dir} exited with {self.process.returncode}: "
            f"{reason} (log: {self.log_path})"
        )

    def _logged_failure(self) -> str:
        found = _first_match(self.log_path, self._log_start, _JAVA_FAILURE)
        return found or "no exception in its log"

    def repairs(self) -> str | None:
        """What the broker truncated of damaged data when it started, if anything."""
        return _first_match(self.log_path, self._log_start, _REPAIRED)

    def wait_ready(self, timeout_seconds: float = 60) -> None:
        """Return once the broker launched here answers; ``BrokerFailed`` if it cannot."""
        deadline = time.monotonic() + timeout_seconds
        own_cluster = self.cluster_id()
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerFailed(self.failure())
            # Wait for the port first: a Kafka client logs every refused connection.
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    time.sleep(0.2)
                    continue
            admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
            try:
                metadata = admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
            except KafkaException:
                continue
            if not metadata.brokers:
                continue
            # Only the broker started here answers with this folder's cluster id.
            if metadata.cluster_id != own_cluster:
                raise PortTaken(
                    f"port {self.port} answers for another Kafka cluster: "
                    f"{port_holder(self.port) or 'another process'}"
                )
            return
        reason = self._logged_failure()
        raise BrokerFailed(
            f"the Kafka broker on {self.data_dir} did not answer within {timeout_seconds:g}s: "
            f"{reason} (log: {self.log_path})"
        )

    def create_topics(
        self, partitions: dict[str, int], configs: dict[str, dict[str, str]] | None = None
    ) -> None:
        """Create the topics that do not exist yet; set ``configs`` (topic -> settings such as
        ``retention.ms``) on new and existing topics alike."""
        configs = configs or {}
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        existing = admin.list_topics(timeout=10).topics
        wanted = [
            NewTopic(name, num_partitions=count, replication_factor=1, config=configs.get(name, {}))
            for name, count in partitions.items()
            if name not in existing
        ]
        if wanted:
            for future in admin.create_topics(wanted, operation_timeout=30).values():
                future.result()
        altered = [
            ConfigResource(
                ResourceType.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                    for key, value in settings.items()
                ],
            )
            for name, settings in configs.items()
            if name in existing and settings
        ]
        if altered:
            for future in admin.incremental_alter_configs(altered).values():
                future.result()

    def stop(self, timeout_seconds: float = 30) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL only if it hangs."""
        if self.process is not None:
            terminate(self.process, timeout_seconds)

    def kill(self) -> None:
        """Stop the broker abruptly, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long the command may take to stop (the sink finishes and commits its batch) before SIGKILL.
COMMAND_STOP_SECONDS = 60


class Stopping(Exception):
    """A stop signal arrived: stop the command, then the broker."""


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP raise ``Stopping`` once; later ones only say it is stopping.

    While ``held()``, a signal waits until the block ends, so that a child being started is never
    left without its handle. (Not with the signal mask: children would inherit it.)"""

    def __init__(self) -> None:
        self._held = False
        self._pending: int | None = None
        self.stopping = False
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, self._arrived)

    def _arrived(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            print("still stopping: the prompt returns once the broker has exited", flush=True)
        elif self._held:
            self._pending = signum
        else:
            self.stopping = True
            raise Stopping(signal.Signals(signum).name)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending is not None and not self.stopping:
            self.stopping = True
            raise Stopping(signal.Signals(self._pending).name)


def _readiness(url: str) -> tuple[bool, str]:
    """Whether ``url`` answers 200, else what it says (a problem's detail) or why it cannot."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True, "ready"
    except urllib.error.HTTPError as answer:
        try:
            return False, str(json.loads(answer.read())["detail"])
        except (ValueError, KeyError, TypeError):
            return False, f"HTTP {answer.code}"
    except (urllib.error.URLError, OSError):
        return False, "the functions are starting"


def terminate(process: subprocess.Popen[bytes], timeout_seconds: float) -> bool:
    """SIGTERM, then SIGKILL if it has not exited within the timeout; whether it was killed."""
    if process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True
    return False


def _stop_command(command: subprocess.Popen[bytes]) -> None:
    if command.poll() is not None:
        return
    print("stopping the functions", flush=True)
    if terminate(command, COMMAND_STOP_SECONDS):
        print(f"the functions did not stop in {COMMAND_STOP_SECONDS}s: killed them", flush=True)


def _serve(broker: LocalKafka, command: subprocess.Popen[bytes], ready_url: str | None) -> int:
    """Watch the command and the broker until the command exits; announce readiness once."""
    assert broker.process is not None
    origin = ready_url.rsplit("/", 1)[0] if ready_url else None
    ready, said = ready_url is None, ""
    while True:
        returncode = command.poll()
        if returncode is not None:
            if not ready:
                print(f"the functions exited with {returncode} before they were ready", flush=True)
            return returncode
        if broker.process.poll() is not None:
            raise BrokerFailed(broker.failure())
        if not ready and ready_url is not None:
            ready, detail = _readiness(ready_url)
            if ready:
                print(f"ready: {origin}", flush=True)
            elif detail != said:
                print(f"waiting for readiness: {detail}", flush=True)
                said = detail
        time.sleep(0.5 if ready else 0.2)


def run(args: argparse.Namespace, command: list[str]) -> int:
    """``make run``: lock, broker, topics, the command; stop in reverse order on a signal."""
    signals = StopSignals()
    lock = StackLock(args.lock)
    broker = LocalKafka(args.data.resolve(), args.port)
    http_port = urllib.parse.urlsplit(args.ready_url).port if args.ready_url else None
    child: subprocess.Popen[bytes] | None = None
    try:
        lock.acquire(
            http=args.ready_url.rsplit("/", 1)[0] if args.ready_url else None,
            kafka=broker.bootstrap_servers,
        )
        if http_port is not None:
            refuse_taken_port(http_port)
        print(f"starting Kafka {kafka_version()} on {broker.bootstrap_servers}", flush=True)
        with signals.held():
            broker.launch(pass_fds=(lock.fd,))
        broker.wait_ready()
        repairs = broker.repairs()
        if repairs is not None:
            print(f"warning: the broker found damaged data in {broker.data_dir}: {repairs}")
        assert broker.process is not None
        lock.describe(broker=broker.process.pid)
        topics = [[*t.split(":", 2), ""][:3] for t in args.topic]
        broker.create_topics(
            {name: int(count) for name, count, _ in topics},
            {
                name: dict(setting.split("=", 1) for setting in settings.split(",") if setting)
                for name, _, settings in topics
            },
        )
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        with signals.held():
            # Its own session: a terminal's signals reach this supervisor only, which stops the
            # command first and the broker after it.
            child = subprocess.Popen(command, env=env, pass_fds=(lock.fd,), start_new_session=True)
        lock.describe(functions=child.pid)
        return _serve(broker, child, args.ready_url)
    except StackBusy as busy:
        print(busy, file=sys.stderr)
        return 1
    except Stopping:
        return 0
    except PortTaken as exc:
        print(f"{exc}: stop that, or choose other ports (PORT=…, KAFKA_PORT=…)", file=sys.stderr)
        return 1
    except BrokerFailed as exc:
        print(
            f"{exc}. If {broker.data_dir} is damaged, `make clean` deletes the local data "
            "and the next run starts empty",
            file=sys.stderr,
        )
        return 1
    finally:
        signals.stopping = True
        if child is not None:
            _stop_command(child)
        if broker.process is not None:
            if broker.process.poll() is None:
                print("stopping Kafka", flush=True)
                broker.stop()
            print("stopped", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the broker jars")
    run_parser = commands.add_parser(
        "run", help="lock, start the broker, run a command; stop both on a signal"
    )
    run_parser.add_argument(
        "--lock", type=Path, required=True, help="lock file of the stack's data folders"
    )
    run_parser.add_argument("--data", type=Path, required=True, help="broker data folder")
    run_parser.add_argument("--port", type=int, default=9092)
    run_parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME:PARTITIONS[:KEY=VALUE,...]",
        help="topic to create if missing, with topic settings such as retention.ms (repeatable)",
    )
    run_parser.add_argument(
        "--ready-url", help="the command's readiness URL: 'ready' is printed once it answers 200"
    )
    run_parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- command to run")
    args = parser.parse_args()

    if args.command == "fetch":
        print(fetch_jars())
        return 0
    return run(args, args.argv[1:] if args.argv[:1] == ["--"] else args.argv)


if __name__ == "__main__":
    sys.exit(main())
