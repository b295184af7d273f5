"""Real Apache Kafka (KRaft) for the tests and the benchmark: one broker, or a 3-broker cluster.

Why: the embedded noida-db broker is a convenience, not Kafka. It never evicts a dead group member,
loses acknowledged writes on a kill -9 and reuses offsets afterwards, so failover, rebalancing and
broker faults can only be shown on the real thing. The broker jars come from Maven Central through
``tests/apache/pom.xml``; they are copied once into a cache (``METAMORPH_KAFKA_CACHE``, default
``~/.cache/metamorph``) and reused by every later run.

``ApacheKafka`` has the interface of ``eventstore.embedded.EmbeddedKafka`` (``bootstrap``, ``running``,
``start``, ``stop``, ``kill``, ``restart``), so a test does not care which broker it got.
``ApacheKafkaCluster`` runs three combined broker+controller JVMs (a static KRaft quorum), with
replication factor 3 and ``min.insync.replicas=2`` for every topic, for the broker-fault tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Self

from eventstore.embedded import free_port, pdeathsig_preexec, tail_of

__all__ = ["ApacheKafka", "ApacheKafkaCluster", "KAFKA_VERSION", "kafka_classpath"]

_log = logging.getLogger(__name__)

POM = Path(__file__).with_name("pom.xml")
KAFKA_VERSION = "4.4.0"  # keep equal to <kafka.version> in pom.xml

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _cache_dir() -> Path:
    base = os.environ.get("METAMORPH_KAFKA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "metamorph")
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def kafka_classpath() -> str:
    """The broker's classpath, resolving the jars with Maven on first use (a file lock serialises runs).

    Raises RuntimeError naming what is missing (java, mvn) or Maven's own error: a test run that cannot
    get a broker must say why, not hang.
    """
    lib = _cache_dir() / "lib"
    done = lib / ".complete"
    if not done.exists():
        for tool in ("java", "mvn"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"Apache Kafka for the tests needs '{tool}' on PATH (Java 17 and Maven)")
        lib.parent.mkdir(parents=True, exist_ok=True)
        with open(lib.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first one's download
            if not done.exists():
                shutil.rmtree(lib, ignore_errors=True)
                cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                       f"-DoutputDirectory={lib}", "-DincludeScope=runtime"]  # fmt: skip
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                if result.returncode != 0:
                    raise RuntimeError(
                        f"resolving the Kafka {KAFKA_VERSION} jars with Maven failed:\n{result.stdout[-3000:]}"
                        f"{result.stderr[-2000:]}"
                    )
                done.touch()
    return str(lib / "*")


def _java_cmd(heap_mb: int, log4j: Path, main: str, *args: str) -> list[str]:
    return [
        "java", f"-Xms{min(heap_mb, 128)}m", f"-Xmx{heap_mb}m", "-XX:+UseSerialGC",
        "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
        "-cp", kafka_classpath(), main, *args,
    ]  # fmt: skip


class ApacheKafka:
    """One Apache Kafka KRaft node (broker and controller in one JVM) on free loopback ports.

    Test-friendly settings: no initial rebalance delay, replication factor 1 for the internal topics
    (unless ``voters`` makes it part of a cluster), a small heap. ``stop()`` is SIGTERM (a controlled
    shutdown), ``kill()`` SIGKILL; ``restart()`` keeps ports and data, so clients simply reconnect.
    """

    START_TIMEOUT = 60.0

    def __init__(
        self,
        data_dir: str | Path,
        *,
        node_id: int = 1,
        port: int | None = None,
        controller_port: int | None = None,
        voters: str | None = None,
        cluster_id: str | None = None,
        heap_mb: int = 384,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.node_id = node_id
        self._port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id or _random_cluster_id()
        self.heap_mb = heap_mb
        self.extra = dict(extra or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._formatted = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def properties(self) -> dict[str, Any]:
        """The server.properties this node runs with (tests may read it; ``extra`` overrides)."""
        single = self.voters.count("@") == 1
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self._port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self._port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            "group.initial.rebalance.delay.ms": 0,
            "offsets.topic.replication.factor": 1 if single else 3,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": 1 if single else 3,
            "transaction.state.log.min.isr": 1 if single else 2,
            "share.coordinator.state.topic.replication.factor": 1 if single else 3,
            "share.coordinator.state.topic.min.isr": 1 if single else 2,
            "default.replication.factor": 1 if single else 3,
            "min.insync.replicas": 1 if single else 2,
            "num.partitions": 1,
            "auto.create.topics.enable": "false",
            "num.network.threads": 2,
            "num.io.threads": 2,
            "log.segment.bytes": 16 * 1024 * 1024,
            # Tests kill members on purpose: let the group notice within seconds, not minutes.
            "group.min.session.timeout.ms": 1000,
        }
        props.update(self.extra)
        return props

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        level = os.environ.get("METAMORPH_KAFKA_LOG_LEVEL", "INFO")
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(level=level))
        return path

    def format(self) -> None:
        """Format the KRaft log dir (once per data dir; a formatted dir is kept across restarts)."""
        config = self._write_config()
        if (self.data_dir / "log" / "meta.properties").exists():
            return
        cmd = _java_cmd(128, self.data_dir / "log4j2.properties", "kafka.tools.StorageTool",
                        "format", "-t", self.cluster_id, "-c", str(config), "--ignore-formatted")  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"formatting the Kafka log dir failed:\n{result.stdout}\n{result.stderr}")

    def spawn(self) -> None:
        """Start the JVM without waiting for it (a cluster starts all three, then waits)."""
        with self._lock:
            if self.running:
                return
            self.format()
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._log_start = log_start
            cmd = _java_cmd(self.heap_mb, self.data_dir / "log4j2.properties", "kafka.Kafka",
                            str(self.data_dir / "server.properties"))  # fmt: skip
            with self.log_path.open("ab") as log:
                log.write(f"\n--- {time.strftime('%H:%M:%S')} starting node {self.node_id}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir,
                    start_new_session=True, preexec_fn=pdeathsig_preexec(),
                )

    def start(self) -> Self:
        """Start and block until the broker answers metadata requests (RuntimeError with its log if not)."""
        self.spawn()
        self.wait_ready()
        return self

    def wait_ready(self, brokers: int = 1, timeout: float | None = None) -> None:
        """Wait until a real Kafka client sees ``brokers`` brokers through this node."""
        deadline = time.monotonic() + (timeout or self.START_TIMEOUT)
        last: BaseException | None = None
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RuntimeError(
                    f"Apache Kafka node {self.node_id} exited with code {code} during start-up; log "
                    f"{self.log_path}:\n{tail_of(self.log_path, start=getattr(self, '_log_start', 0))}"
                )
            if _port_open(self._port):
                try:
                    if _broker_count(self.bootstrap) >= brokers:
                        return
                except Exception as exc:  # not ready yet
                    last = exc
            time.sleep(0.2)
        raise RuntimeError(
            f"Apache Kafka node {self.node_id} did not answer on {self.bootstrap} within the time limit "
            f"(last error {last!r}); log {self.log_path}:\n{tail_of(self.log_path)}"
        )

    def stop(self, timeout: float = 30) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL after ``timeout`` seconds. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: a crash. The data dir stays; ``start()`` brings the node back."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def restart(self, timeout: float = 30) -> Self:
        self.stop(timeout)
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ApacheKafka(node={self.node_id}, bootstrap={self.bootstrap!r}, running={self.running})"


class ApacheKafkaCluster:
    """Three KRaft nodes (each broker + controller) forming one cluster: RF 3, ``min.insync.replicas=2``.

    Small heaps, so three JVMs fit next to the suite on a 2-core machine. ``nodes[i]`` can be killed and
    restarted one by one; ``leader_of(topic, partition)`` says which one to kill.
    """

    def __init__(self, data_dir: str | Path, size: int = 3, heap_mb: int = 256) -> None:
        base = Path(data_dir).expanduser().resolve()
        ports = [(free_port(), free_port()) for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{ctrl}" for i, (_, ctrl) in enumerate(ports))
        cluster_id = _random_cluster_id()
        self.nodes = [
            ApacheKafka(base / f"node{i + 1}", node_id=i + 1, port=port, controller_port=ctrl, voters=voters,
                        cluster_id=cluster_id, heap_mb=heap_mb)
            for i, (port, ctrl) in enumerate(ports)
        ]  # fmt: skip

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    def start(self) -> Self:
        for node in self.nodes:
            node.spawn()  # all at once: the controller quorum needs a majority before anyone is ready
        for node in self.nodes:
            node.wait_ready(brokers=len(self.nodes), timeout=120)
        return self

    def stop(self) -> None:
        threads = [threading.Thread(target=n.stop) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def node(self, node_id: int) -> ApacheKafka:
        return next(n for n in self.nodes if n.node_id == node_id)

    def leader_of(self, topic: str, partition: int) -> int:
        """Node id of the current leader of ``topic``/``partition`` (from a fresh metadata request)."""
        from kafka import KafkaAdminClient

        live = ",".join(n.bootstrap for n in self.nodes if n.running)
        admin = KafkaAdminClient(bootstrap_servers=live, request_timeout_ms=5000)
        try:
            (meta,) = admin.describe_topics([topic])
            for p in meta["partitions"]:
                if p["partition_index"] == partition:
                    return int(p["leader_id"])
        finally:
            admin.close()
        raise LookupError(f"{topic}[{partition}] not found")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what ``random-uuid`` prints)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _broker_count(bootstrap: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, client_id="metamorph-probe")
    try:
        return len(admin.describe_cluster()["brokers"])
    finally:
        with contextlib.suppress(Exception):
            admin.close()
