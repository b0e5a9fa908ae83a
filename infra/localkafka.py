"""A single-node KRaft Apache Kafka broker for local runs and tests, from Maven Central jars.

    python infra/localkafka.py fetch
    python infra/localkafka.py run --data .local/kafka --port 9092 -- <command ...>

``fetch`` copies the broker jars (``infra/kafka/pom.xml``) into a cache outside git. ``run``
formats the data folder on first use, starts the broker, creates the topics, runs the command
with ``KAFKA_BOOTSTRAP_SERVERS`` set, and stops the broker once the command has exited (so the
command can still flush to it while shutting down). Tests use ``LocalKafka`` directly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

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

    def start(self, timeout_seconds: float = 60) -> None:
        """Format on first use, start the broker and wait until it answers."""
        libs = fetch_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "log" / "meta.properties").exists():
            subprocess.run(
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
                check=True,
                stdout=subprocess.DEVNULL,
            )
        log = (self.data_dir / "broker.out").open("ab")
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the app, which stops the broker after it
        )
        self._wait_ready(timeout_seconds)

    def _wait_ready(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.process.returncode}; see "
                    f"{self.data_dir / 'broker.out'}"
                )
            # Wait for the port first: a Kafka client logs every refused connection.
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    time.sleep(0.2)
                    continue
            admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
            if admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).brokers:
                return
        raise TimeoutError(f"broker on {self.bootstrap_servers} not ready in {timeout_seconds}s")

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
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Stop the broker abruptly, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the broker jars")
    run = commands.add_parser("run", help="start the broker, run a command, stop the broker")
    run.add_argument("--data", type=Path, required=True, help="broker data folder")
    run.add_argument("--port", type=int, default=9092)
    run.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME:PARTITIONS[:KEY=VALUE,...]",
        help="topic to create if missing, with topic settings such as retention.ms (repeatable)",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- command to run")
    args = parser.parse_args()

    if args.command == "fetch":
        print(fetch_jars())
        return 0

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    broker = LocalKafka(args.data.resolve(), args.port)
    print(f"starting Kafka {kafka_version()} on {broker.bootstrap_servers}", flush=True)
    broker.start()
    try:
        topics = [[*t.split(":", 2), ""][:3] for t in args.topic]
        broker.create_topics(
            {name: int(count) for name, count, _ in topics},
            {
                name: dict(setting.split("=", 1) for setting in settings.split(",") if setting)
                for name, _, settings in topics
            },
        )
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        child = subprocess.Popen(command, env=env)
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the child got the same Ctrl-C: wait for its clean exit
                continue
    finally:
        print("stopping Kafka", flush=True)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
