"""The ``metamorph`` command line: run the processes, and start and steer workflows from a shell or script.

Process commands: ``init``, ``node``, ``worker``, ``projector``, ``serve``, ``dev``, ``demo``.
Client commands: ``start``, ``signal``, ``query``, ``update``, ``status``, ``result``, ``list``, ``count``,
``batch``, ``history``, ``exceptions``, ``cancel``, ``terminate``, ``retry``, ``pause``, ``resume``, ``reset`` (human output; ``--json`` for scripts).
Checks and interop: ``replay`` (recorded histories against new code), ``schemas`` (export the Avro schemas).

Connection options on every command: ``--kafka`` (``METAMORPH_KAFKA``, default ``127.0.0.1:9092``),
``--postgres`` (``METAMORPH_POSTGRES``), ``--namespace`` (``METAMORPH_NAMESPACE``, default ``default``).

Exit codes scripts can rely on:

  0   ok
  1   the workflow failed, was cancelled, was terminated or timed out (``result``); a non-determinism
      found (``replay``)
  2   usage or configuration error (bad arguments, --postgres missing, topics not initialised,
      partition-count mismatch, an --app module that does not import)
  3   workflow not found
  4   timeout (``result --timeout``, a query/update nobody answered)
  5   Kafka broker or PostgreSQL unreachable
  6   refused: a start refused by its --if-running/--if-closed policy (WorkflowAlreadyStarted),
      a query/update the workflow could not answer (QueryFailed), a signal, cancel,
      terminate or update of a workflow that has already ended (WorkflowNotRunning), or a retry of
      a workflow that has not failed
  70  internal error (a bug: please report it; METAMORPH_DEBUG=1 shows the traceback)
  130 interrupted

Errors are one line on stderr (``error: ...``), never a traceback. Why the probe before Kafka calls: the
Kafka client waits up to 30 s to bootstrap from an address nobody listens on; a TCP connect tells the
same in milliseconds, so ``--kafka 127.0.0.1:9`` fails fast with exit status 5.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

# The exit statuses live with the one error table that the HTTP API shares (re-exported for callers).
from actors.errors import (  # noqa: F401
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_WORKFLOW,
)
from eventstore import settings

DEFAULT_KAFKA = "127.0.0.1:9092"
PROBE_TIMEOUT = 3.0
PG_CONNECT_TIMEOUT = 5


EPILOG = """\
exit codes:
  0 ok; 1 workflow failed/cancelled/terminated (result), non-determinism found (replay);
  2 usage or configuration error;
  3 workflow not found; 4 timeout; 5 Kafka or PostgreSQL unreachable;
  6 refused (query/update failed, workflow already ended, retry of a workflow that has not failed
    or whose saga already compensated without --force);
  70 internal error

environment: METAMORPH_KAFKA, METAMORPH_POSTGRES, METAMORPH_NAMESPACE (defaults for the options),
METAMORPH_WEBHOOK_AUTH / _TOKEN / _SECRET / _TOLERANCE, METAMORPH_API_TOKENS (name:token,ro:name:token),
METAMORPH_HTTP_MAX_BODY (serve, dev), METAMORPH_DEBUG=1 (tracebacks)"""


class CliError(Exception):
    """An error with a known exit status and a message meant for the user."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- small helpers ---------------------------------------------------------------------------------------
def _json_arg(text: str) -> Any:
    """A JSON_ARG: parsed as JSON when it is JSON (``42``, ``true``, ``{"a":1}``), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _dump(value: Any) -> str:
    from actors.interfaces.http import jsonable

    return json.dumps(value, default=jsonable, indent=2, ensure_ascii=False)


def _show(value: Any) -> str:
    """Human rendering of a payload: strings as they are, anything else as compact JSON."""
    from actors.interfaces.http import jsonable

    return value if isinstance(value, str) else json.dumps(value, default=jsonable, ensure_ascii=False)


def _when(value: Any) -> str:
    if value in (None, ""):
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    """One line, with passwords of connection strings masked (URI and key=value forms)."""
    from actors.interfaces.http import redact

    return redact(
        "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"
    )


def _kafka(args: argparse.Namespace) -> str:
    return args.kafka or DEFAULT_KAFKA


def _postgres(args: argparse.Namespace, required: bool = True) -> str | None:
    """The Postgres conninfo with a connect timeout, so an unreachable server fails in seconds, not minutes."""
    if not args.postgres:
        if required:
            raise CliError(
                EXIT_USAGE, "this command needs PostgreSQL: pass --postgres URI or set METAMORPH_POSTGRES"
            )
        return None
    from psycopg.conninfo import conninfo_to_dict

    conninfo = args.postgres
    try:
        if "connect_timeout" in conninfo_to_dict(conninfo):
            return conninfo
    except Exception as exc:
        raise CliError(EXIT_USAGE, f"invalid --postgres connection string: {_one_line(str(exc))}") from None
    # Appended rather than rebuilt, so a URI stays a URI (error messages redact URI passwords).
    if "://" in conninfo:
        return f"{conninfo}{'&' if '?' in conninfo else '?'}connect_timeout={PG_CONNECT_TIMEOUT}"
    return f"{conninfo} connect_timeout={PG_CONNECT_TIMEOUT}"


def probe_kafka(bootstrap: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise ConnectionError unless at least one bootstrap server accepts a TCP connection."""
    errors = []
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                return
        except ValueError:
            raise CliError(EXIT_USAGE, f"invalid Kafka address {server!r} (expected host:port)") from None
        except OSError as exc:
            errors.append(exc.strerror or str(exc) or type(exc).__name__)
    raise ConnectionError(
        f"Kafka broker at {bootstrap} is unreachable: {', '.join(errors) or 'no address given'}"
    )


def require_namespace(bootstrap: str, namespace: str) -> None:
    """Refuse to write into a namespace whose topics do not exist.

    Why: a producer would make the broker auto-create ``<ns>.commands`` with the broker's default partition
    count, silently fixing the namespace's P at that number (and without an events topic). Listing topics
    does not create any.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from eventstore.topics import Topics

    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "metamorph-cli",
        "request_timeout_ms": 5000,
    }
    if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:
        options["bootstrap_timeout_ms"] = int(PROBE_TIMEOUT * 1000)
    try:
        admin = KafkaAdminClient(**options)
    except KafkaError as exc:
        raise ConnectionError(f"Kafka broker at {bootstrap} is unreachable: {exc}") from exc
    try:
        topics = Topics(namespace)
        if not {topics.commands, topics.events} <= set(admin.list_topics()):
            raise CliError(
                EXIT_USAGE,
                f"namespace {namespace!r} has no topics on {bootstrap}; run `metamorph init` first",
            )
    finally:
        admin.close()


def _client(args: argparse.Namespace, kafka: bool = False, postgres: bool = True) -> Any:
    """A Client for the options; ``kafka=True`` probes the broker first (the command will write to it).

    Every client command but ``start`` reads the projections (even ``signal`` checks that the workflow
    exists), so PostgreSQL is required unless ``postgres=False``.
    """
    from actors.client.sync import Client

    conninfo = _postgres(args, required=postgres)
    if kafka:
        probe_kafka(_kafka(args))
        require_namespace(_kafka(args), args.namespace)
    return Client(kafka=_kafka(args), postgres=conninfo, namespace=args.namespace)


def _emit(args: argparse.Namespace, data: Any, human: str | Callable[[], str]) -> None:
    print(_dump(data) if args.json else (human() if callable(human) else human), flush=True)


def _logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    # kafka-python's own event-loop timing warnings say nothing a user can act on
    logging.getLogger("kafka.net.selector").setLevel(max(logging.ERROR, logging.getLogger().level))


# -- process commands ------------------------------------------------------------------------------------
def _cmd_init(args: argparse.Namespace) -> int:
    from eventstore.topics import ensure_topics

    kafka = _kafka(args)
    probe_kafka(kafka)
    counts = ensure_topics(
        kafka, args.namespace, args.partitions, tuple(_split(args.queues) or ("default",)),
        replication=args.replication_factor, min_insync=args.min_insync_replicas,
    )
    print(f"Kafka {kafka}, namespace {args.namespace!r}: topics ready")
    for topic, partitions in sorted(counts.items()):
        print(f"  {topic:<48} {partitions} partition(s)")
    postgres = _postgres(args, required=False)
    if postgres is None:
        print("PostgreSQL: not configured (--postgres / METAMORPH_POSTGRES); projections not set up")
        return EXIT_OK
    from projections.db import schema_name
    from projections.migrate import available, migrate

    applied = migrate(postgres, args.namespace)
    latest = max(available(), default=0)
    done = f"applied migration(s) {', '.join(map(str, applied))}" if applied else "already up to date"
    print(f"PostgreSQL schema {schema_name(args.namespace)}: {done} (version {latest})")
    return EXIT_OK


def _prepare(args: argparse.Namespace, queues: tuple[str, ...], partitions: int | None = None) -> str:
    """What node, worker and projector do first: probe Kafka, ensure topics (and migrations if configured)."""
    from eventstore.topics import ensure_topics

    kafka = _kafka(args)
    probe_kafka(kafka)
    ensure_topics(kafka, args.namespace, partitions, queues)
    postgres = _postgres(args, required=False)
    if postgres:
        from projections.migrate import migrate

        migrate(postgres, args.namespace)
    if getattr(args, "metrics_port", 0):
        from eventstore import metrics

        metrics.serve(args.metrics_port)
    return kafka


def _cmd_node(args: argparse.Namespace) -> int:
    from actors.interfaces import dev
    from actors.node.loop import Node

    _logging(args.log_level)
    dev.import_apps(args.app)
    queues = dev.app_queues(_split(args.queues))
    kafka = _prepare(args, queues, args.partitions)
    stop = dev.shutdown_event()
    node = Node(
        kafka,
        args.namespace,
        data_dir=args.data_dir,
        max_live_workflows=args.max_live_workflows,
        queues=queues,
        activity_concurrency=args.activity_concurrency,
        partitions=args.partitions,
        name=args.name,
        session_timeout=args.session_timeout,
    )
    node.start()
    try:
        for _ in range(120):
            if stop.is_set() or node.wait_ready(0.5):
                break
        print(
            f"node {node.name} running (namespace {args.namespace!r}, partitions {node.owned_partitions}, "
            f"queues {', '.join(queues)}); Ctrl-C to stop",
            flush=True,
        )
        dev.wait(stop)
    finally:
        node.stop()
    print("node stopped", flush=True)
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    from actors.activities.worker import ActivityWorker
    from actors.interfaces import dev

    _logging(args.log_level)
    dev.import_apps(args.app)
    queues = dev.app_queues(_split(args.queues))
    kafka = _prepare(args, queues)
    stop = dev.shutdown_event()
    worker = ActivityWorker(
        kafka, args.namespace, queues, args.activity_concurrency, name=args.name, session_timeout=args.session_timeout
    ).start()
    try:
        print(
            f"activity worker running (namespace {args.namespace!r}, queues {', '.join(queues)}); Ctrl-C to stop",
            flush=True,
        )
        dev.wait(stop)
    finally:
        worker.stop()
    print("worker stopped", flush=True)
    return EXIT_OK


def _cmd_projector(args: argparse.Namespace) -> int:
    import threading

    from actors.interfaces import dev
    from projections.projector import Projector

    _logging(args.log_level)
    postgres = _postgres(args)
    kafka = _prepare(args, ("default",))
    stop = dev.shutdown_event()
    thread = threading.Thread(
        target=Projector(kafka, str(postgres), args.namespace, name=args.name, session_timeout=args.session_timeout).run,
        args=(stop,),
        name="metamorph-projector",
        daemon=True,
    )
    thread.start()
    print(f"projector running (namespace {args.namespace!r}); Ctrl-C to stop", flush=True)
    reason = dev.wait(stop, lambda: None if thread.is_alive() else "the projector stopped")
    stop.set()
    thread.join(15)
    if reason:
        raise CliError(EXIT_INTERNAL, reason)
    print("projector stopped", flush=True)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from actors.interfaces import dev, http
    from eventstore import metrics

    _logging(args.log_level)
    dev.import_apps(args.app or [])
    probe_kafka(_kafka(args))
    require_namespace(_kafka(args), args.namespace)  # else the first start would auto-create a wrong topic
    client = _client(args, postgres=False)
    try:
        app = http.create_app(client, webhook_auth=args.webhook_auth)
    except ValueError as exc:
        raise CliError(EXIT_USAGE, str(exc)) from None
    sock = http.bind(args.host, args.port)
    try:
        if args.metrics_port:
            metrics.serve(args.metrics_port)
        host, port = sock.getsockname()[:2]
        print(
            f"Metamorph HTTP API on http://{host}:{port} (namespace {args.namespace!r}); Ctrl-C to stop",
            flush=True,
        )
        dev.shutdown_event(announce=False)  # uvicorn handles signals while it runs, then re-raises them here
        http.server(app, sock, log_level=args.log_level).run(sockets=[sock])
    finally:
        sock.close()
        client.close()
    return EXIT_OK


def _cmd_dev(args: argparse.Namespace) -> int:
    from actors.interfaces import dev

    _logging(args.log_level)
    return dev.run_dev(
        args.app,
        kafka=args.kafka,
        postgres=args.postgres,
        namespace=args.namespace,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        partitions=args.partitions,
        data_dir=args.data_dir,
        queues=_split(args.queues),
    )


def _bench_main() -> Callable[[list[str]], int | None]:
    """``bench`` is a directory of the repository (not installed): found from the current directory."""
    from actors.interfaces.dev import import_apps

    return import_apps(["bench.__main__"])[0].main


def _cmd_bench(args: argparse.Namespace) -> int:
    return _bench_main()(list(args.bench_args)) or EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    for var, value in (("METAMORPH_KAFKA", args.kafka), ("METAMORPH_POSTGRES", args.postgres)):
        if value:
            os.environ[var] = value
    from actors.interfaces import demo

    return demo.main(app=args.app) or EXIT_OK


# -- client commands -------------------------------------------------------------------------------------
def _cmd_start(args: argparse.Namespace) -> int:
    with _client(args, kafka=True, postgres=False) as client:
        handle = client.start(
            args.type, *map(_json_arg, args.args), id=args.id, if_running=args.if_running, if_closed=args.if_closed,
            start_signal=args.start_signal, start_signal_args=[_json_arg(a) for a in args.start_signal_arg or ()],
            start_delay=args.start_delay, timeout=args.timeout, search=_start_search(args.search),
            memo=json.loads(args.memo) if args.memo else None, priority=args.priority,
        )
        _emit(args, {"id": handle.id, "type": args.type, "run_id": handle.run_id}, handle.id)
    return EXIT_OK


def _cmd_signal(args: argparse.Namespace) -> int:
    with _client(args, kafka=True) as client:
        client.get(args.id).signal(args.name, *map(_json_arg, args.args))
        _emit(args, {"id": args.id, "signal": args.name}, f"signal {args.name} sent to {args.id}")
    return EXIT_OK


def _cmd_query(args: argparse.Namespace) -> int:
    with _client(args, kafka=True) as client:
        handle = client.get(args.id)
        fn = handle.query if args.command == "query" else handle.update
        result = fn(args.name, *map(_json_arg, args.args), timeout=args.timeout)
        _emit(args, {"id": args.id, "result": result}, lambda: _show(result))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        row = client.get(args.id).describe()
    _emit(args, row, lambda: _describe(row))
    return EXIT_OK


def _describe(row: dict) -> str:
    lines = [
        ("id", row["id"]),
        ("type", row.get("type")),
        ("status", row.get("status")),
        ("created", _when(row.get("created_at"))),
        ("updated", _when(row.get("updated_at"))),
    ]
    if row.get("parent_id"):
        lines.append(("parent", row["parent_id"]))
    if row.get("status") == "completed":
        lines.append(("output", _show(row.get("output"))))
    if row.get("error_type") or row.get("error_message"):
        lines.append(("error", f"{row.get('error_type') or 'Error'}: {row.get('error_message') or ''}"))
    return "\n".join(f"{k + ':':<9}{v}" for k, v in lines)


def _cmd_result(args: argparse.Namespace) -> int:
    from actors.errors import WorkflowCancelled, WorkflowFailed, WorkflowTerminated, WorkflowTimedOut

    with _client(args) as client:
        try:
            output = client.get(args.id).result(timeout=args.timeout)
        except (WorkflowFailed, WorkflowCancelled, WorkflowTerminated, WorkflowTimedOut) as exc:
            if args.json:
                status = {WorkflowFailed: "failed", WorkflowCancelled: "cancelled", WorkflowTimedOut: "timed_out"}.get(
                    type(exc), "terminated"
                )
                detail = (
                    {"error_type": exc.error_type, "message": exc.message}
                    if isinstance(exc, WorkflowFailed)
                    else {}
                )
                print(_dump({"id": args.id, "status": status, **detail}), flush=True)
            raise
    _emit(args, {"id": args.id, "status": "completed", "output": output}, lambda: _show(output))
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    """One page, newest first; the next page's cursor goes to stderr (``next_cursor: C``) so that stdout
    stays the table, or with --json the list of rows scripts already parse."""
    from dataclasses import asdict

    with _client(args) as client:
        page = client.list(status=args.status, type=args.type, limit=args.limit, search=_search_option(args),
                           started_after=args.after, started_before=args.before, cursor=args.cursor)
    rows = [asdict(s) for s in page]
    header = ["ID", "TYPE", "STATUS", "CREATED", "UPDATED"]
    table = [[r["id"], r["type"], r["status"], _when(r["created_at"]), _when(r["updated_at"])] for r in rows]
    if any(r["search"] for r in rows):  # the column only when there is something to show in it
        header.append("SEARCH")
        for line, r in zip(table, rows, strict=True):
            line.append(" ".join(f"{k}={_show(v)}" for k, v in sorted(r["search"].items())))
    _emit(args, rows, lambda: _table(table, header) if rows else "no workflows")
    if page.next_cursor:
        print(f"next_cursor: {page.next_cursor}", file=sys.stderr, flush=True)
    return EXIT_OK


def _start_search(items: list[str] | None) -> dict[str, Any] | None:
    """``--search key=value`` of ``start``: attributes to set, so only ``=``."""
    from actors.search import filters_from_text

    filters = filters_from_text(items) or {}
    for key, (op, _value) in filters.items():
        if op != "=":
            raise ValueError(f"start --search {key!r}: attributes are set with key=value, not {op!r}")
    return {key: value for key, (_op, value) in filters.items()} or None


def _search_option(args: argparse.Namespace) -> dict[str, Any] | None:
    from actors.search import filters_from_text

    return filters_from_text(args.search)


def _cmd_count(args: argparse.Namespace) -> int:
    with _client(args) as client:
        n = client.count(status=args.status, type=args.type, search=_search_option(args),
                         started_after=args.after, started_before=args.before)
    _emit(args, {"count": n}, str(n))
    return EXIT_OK


def _cmd_batch(args: argparse.Namespace) -> int:
    with _client(args, kafka=True) as client:
        n = client.batch(args.action, status=args.status, type=args.type, search=_search_option(args),
                         reason=args.reason, signal=args.signal, args=[_json_arg(a) for a in args.arg or ()])
    _emit(args, {"action": args.action, "count": n}, f"{args.action}: {n} workflow{'s' if n != 1 else ''}")
    return EXIT_OK


_NOT_DETAILS = {"seq", "type", "at", "run_id", "workflow_id", "status", "event_id", "command_id", "epoch"}


def _details(event: dict, width: int = 70) -> str:
    parts = [
        f"{k}={_show(v)}" for k, v in event.items() if k not in _NOT_DETAILS and v not in (None, "", [], {})
    ]
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _cmd_history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        events = client.get(args.id).history()
    table = [[str(e.get("seq")), _when(e.get("at")), e.get("type", "?"), _details(e)] for e in events]
    _emit(
        args, events, lambda: _table(table, ["SEQ", "AT", "TYPE", "DETAILS"]) if events else "no events yet"
    )
    return EXIT_OK


def _cmd_stream(args: argparse.Namespace) -> int:
    """Print the workflow's stream items as JSON lines, live, until it ends (exit 4 on --timeout)."""
    with _client(args) as client:
        for item in client.get(args.id).stream(after=args.after, timeout=args.timeout):
            print(json.dumps(item, ensure_ascii=False, default=str), flush=True)
    return EXIT_OK


def _cmd_exceptions(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entries = client.get(args.id).exceptions()

    def human() -> str:
        if not entries:
            return "no exceptions"
        blocks = []
        for e in entries:
            where = f"activity {e['activity']} attempt {e['attempt']}" if e.get("activity") else "workflow"
            head = f"{_when(e.get('at'))}  {where}: {e.get('error_type')}: {e.get('message')}"
            trace = "\n".join("    " + line for line in (e.get("traceback") or "").rstrip().splitlines())
            blocks.append(head + ("\n" + trace if trace else ""))
        return "\n".join(blocks)

    _emit(args, entries, human)
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args, kafka=True) as client:
        client.get(args.id).cancel()
    _emit(args, {"id": args.id, "requested": "cancel"}, f"cancellation of {args.id} requested")
    return EXIT_OK


def _cmd_terminate(args: argparse.Namespace) -> int:
    with _client(args, kafka=True) as client:
        client.get(args.id).terminate(args.reason)
    _emit(args, {"id": args.id, "requested": "terminate"}, f"termination of {args.id} requested")
    return EXIT_OK


def _cmd_pause(args: argparse.Namespace) -> int:
    with _client(args, kafka=True) as client:
        client.get(args.id).pause(args.reason)
    _emit(args, {"id": args.id, "requested": "pause"}, f"pause of {args.id} requested")
    return EXIT_OK


def _cmd_resume(args: argparse.Namespace) -> int:
    with _client(args, kafka=True) as client:
        client.get(args.id).resume()
    _emit(args, {"id": args.id, "requested": "resume"}, f"resume of {args.id} requested")
    return EXIT_OK


def _cmd_reset(args: argparse.Namespace) -> int:
    """A seq the run does not have is a usage error: nothing was sent."""
    from eventstore.log import PayloadTooLargeError

    with _client(args, kafka=True) as client:
        try:
            client.get(args.id).reset(args.seq)
        except ValueError as exc:
            if isinstance(exc, PayloadTooLargeError):
                raise
            raise CliError(EXIT_USAGE, str(exc)) from None
    _emit(args, {"id": args.id, "requested": "reset", "seq": args.seq}, f"reset of {args.id} to seq {args.seq} requested")
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    from actors.errors import AlreadyCompensated
    from eventstore.log import PayloadTooLargeError

    with _client(args, kafka=True) as client:
        try:
            client.get(args.id).retry(force=args.force)
        except AlreadyCompensated as exc:
            raise CliError(EXIT_REFUSED, f"warning: {exc} (--force)") from None
        except ValueError as exc:
            if isinstance(exc, PayloadTooLargeError):
                raise
            raise CliError(EXIT_REFUSED, str(exc)) from None
    _emit(args, {"id": args.id, "requested": "retry"}, f"retry of {args.id} requested")
    return EXIT_OK


def _cmd_schedule(args: argparse.Namespace) -> int:
    """``metamorph schedule create|describe|list|pause|resume|trigger|backfill|delete`` (docs/API.md §8)."""
    action = args.schedule_command
    if action == "create":
        from actors.schedules import check_schedule_id, make_spec

        spec = {"cron": args.cron, "every": args.every, "timezone": args.timezone, "overlap": args.overlap,
                "catchup_window": args.catchup_window, "jitter": args.jitter, "start_at": args.start_at,
                "end_at": args.end_at}
        check_schedule_id(args.id)
        make_spec(args.type, (), **spec)  # bad input is refused before connecting
        with _client(args, kafka=True, postgres=False) as client:
            handle = client.schedule(args.id, args.type, *map(_json_arg, args.args), paused=args.paused, **spec)
            info = handle.describe()
        _emit(args, info, lambda: _schedule_text(info))
        return EXIT_OK
    if action == "list":
        with _client(args, kafka=True) as client:
            items = client.list_schedules()
        _emit(args, items, lambda: "\n".join(
            f"{i['id']:<32} {'paused' if i.get('paused') else 'active':<7} next {(i.get('next_runs') or ['-'])[0]}"
            for i in items) or "no schedules")
        return EXIT_OK
    with _client(args, kafka=True, postgres=False) as client:
        handle = client.get_schedule(args.id)
        if action == "describe":
            info = handle.describe()
            _emit(args, info, lambda: _schedule_text(info))
            return EXIT_OK
        if action == "pause":
            handle.pause(args.note)
        elif action == "backfill":
            count = handle.backfill(args.start, args.end)
            _emit(args, {"id": args.id, "backfilled": count}, f"schedule {args.id}: {count} fire time(s) backfilled")
            return EXIT_OK
        elif action == "trigger":
            run_id = handle.trigger()
            _emit(args, {"id": args.id, "run_id": run_id}, run_id)
            return EXIT_OK
        else:
            getattr(handle, action)()
    _emit(args, {"id": args.id, "done": action}, f"schedule {args.id}: {action}d" if action.endswith("e") else f"schedule {args.id}: {action}")
    return EXIT_OK


def _schedule_text(info: dict) -> str:
    spec = info["spec"]
    when = f"cron {spec['cron']!r} ({spec['timezone']})" if spec.get("cron") else f"every {spec['every']:g}s"
    lines = [f"schedule {info['id']}: {spec['workflow_type']} {when}, overlap {spec['overlap']}"
             + (" [paused]" if info.get("paused") else "")]
    lines += [f"  next   {t}" for t in info.get("next_runs", [])]
    lines += [f"  recent {r['id']} {r['status']}" for r in info.get("recent_runs", [])]
    return "\n".join(lines)


def _cmd_replay(args: argparse.Namespace) -> int:
    """Replay histories (files, or the last N runs of a type from PostgreSQL) against the --app code.

    Every history is loaded and its type resolved before anything is replayed, so an unreadable file or a
    type the app does not define is a usage error (exit 2), never a silent pass. Then one line per
    non-determinism on stdout, a summary on stderr, exit 1 if any.
    """
    from actors.engine import replayer
    from actors.interfaces import dev

    if bool(args.paths) == bool(args.type):
        raise CliError(EXIT_USAGE, "give FILE_OR_DIR... or --type T [--last N], not both and not neither")
    classes = replayer.app_workflows(dev.import_apps(args.app))
    histories: list[tuple[str, Any]] = []
    if args.paths:
        for source, doc in replayer.read_files(args.paths):
            try:
                histories.append((source, replayer.load_history(doc)))
            except ValueError as exc:
                raise CliError(EXIT_USAGE, f"{source}: not a replayable history: {exc}") from None
    else:
        if args.type not in classes:
            raise CliError(EXIT_USAGE, f"unknown workflow type {args.type!r}: the --app modules do not define it")
        from projections.db import connect

        with connect(str(_postgres(args)), args.namespace) as conn:
            found = _recent_histories(conn, args.type, args.last)
        histories = [(f"{h.workflow_id}@{h.run_id}", h) for h in found]
    for source, history in histories:
        if history.workflow_type not in classes:
            known = ", ".join(sorted(classes)) or "none"
            raise CliError(
                EXIT_USAGE, f"{source}: unknown workflow type {history.workflow_type!r} (the app defines: {known})"
            )
    findings = [f for source, h in histories if (f := replayer.check(source, h, classes)) is not None]
    for finding in findings:
        print(finding.line(), flush=True)
    print(
        f"replayed {len(histories)} history(ies): "
        + (f"{len(findings)} non-deterministic" if findings else "all deterministic"),
        file=sys.stderr,
        flush=True,
    )
    return EXIT_WORKFLOW if findings else EXIT_OK


def _cmd_schemas(args: argparse.Namespace) -> int:
    from eventstore.interop import export_schemas

    written = export_schemas(args.dir)
    _emit(args, [str(p) for p in written], f"wrote {len(written)} files to {args.dir} (index: README.md)")
    return EXIT_OK


# -- parsing ---------------------------------------------------------------------------------------------
def _split(values: list[str] | None) -> list[str] | None:
    """``--queues a,b --queues c`` → ``[a, b, c]``."""
    if not values:
        return None
    return [q.strip() for v in values for q in v.split(",") if q.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _session_timeout(text: str) -> float:
    from eventstore.groups import session_timeout

    try:
        return session_timeout(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    # Connection options are accepted before or after the command. Their defaults are SUPPRESSed and filled
    # in by _connection_defaults: with real defaults, argparse would let the subcommand's default overwrite
    # a value given before the command.
    conn = argparse.ArgumentParser(add_help=False)
    group = conn.add_argument_group("connection")
    group.add_argument(
        "--kafka",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help=f"Kafka bootstrap servers (METAMORPH_KAFKA; default {DEFAULT_KAFKA})",
    )
    group.add_argument(
        "--postgres",
        metavar="URI",
        default=argparse.SUPPRESS,
        help="PostgreSQL connection string (METAMORPH_POSTGRES)",
    )
    group.add_argument(
        "--namespace",
        metavar="NS",
        default=argparse.SUPPRESS,
        help="topic prefix and schema (METAMORPH_NAMESPACE; default 'default')",
    )
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    proc = argparse.ArgumentParser(add_help=False)
    proc.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])

    parser = argparse.ArgumentParser(
        prog="metamorph",
        description="Metamorph: durable workflows on Kafka and PostgreSQL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[conn],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], text: str, *parents: Any
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            parents=[conn, *parents],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=fn)
        return p

    def apps(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument(
            "--app",
            action="append",
            required=required,
            metavar="MODULE",
            help="module defining workflows/activities (repeatable; imported from the current directory)",
        )

    def queues(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--queues",
            action="append",
            metavar="A,B",
            help="activity queues to serve (default: every queue the apps use, plus 'default')",
        )

    def partitions(p: argparse.ArgumentParser, text: str) -> None:
        p.add_argument("--partitions", type=_positive_int, metavar="P", help=text)

    def session_timeout(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--session-timeout",
            type=_session_timeout,
            metavar="S",
            help="seconds after which the group gives a silent member's partitions to the others: the failover "
            "time after a crash (METAMORPH_SESSION_TIMEOUT, default 10; shorter risks evicting a member "
            "that is only slow)",
        )

    def metrics_port(p: argparse.ArgumentParser, default: int = 0) -> None:
        p.add_argument(
            "--metrics-port",
            type=_port,
            default=default,
            metavar="N",
            help=f"serve Prometheus /metrics on this port (0 = off; default {default})",
        )

    p = command(
        "init", _cmd_init, "create the namespace's topics and apply the PostgreSQL migrations (idempotent)"
    )
    partitions(p, "partitions of new topics (default 8); existing topics must already have this count")
    queues(p)
    p.add_argument(
        "--replication-factor",
        type=_positive_int,
        metavar="N",
        help="copies of each new topic's data (default: 3, or the number of brokers if fewer)",
    )
    p.add_argument(
        "--min-insync-replicas",
        type=_positive_int,
        metavar="N",
        help="copies a write needs before it is acknowledged (default 2 with RF 3, else 1)",
    )

    p = command("node", _cmd_node, "run workflow (and activity) actors for the --app modules", proc)
    apps(p, True)
    queues(p)
    p.add_argument("--activity-concurrency", type=_positive_int, default=32, metavar="N")
    p.add_argument("--max-live-workflows", type=_positive_int, default=1000, metavar="N")
    p.add_argument(
        "--data-dir", default=".metamorph", metavar="DIR", help="local state stores (default .metamorph)"
    )
    partitions(p, "partitions when creating the topics (default: the existing count, else 8)")
    metrics_port(p)
    p.add_argument(
        "--name",
        help="node identity in the consumer group (default: host name + a hash of --data-dir, stable across restarts)",
    )
    session_timeout(p)

    p = command("worker", _cmd_worker, "run activity actors only", proc)
    apps(p, True)
    queues(p)
    p.add_argument("--activity-concurrency", type=_positive_int, default=32, metavar="N")
    p.add_argument(
        "--name",
        help="worker identity in the consumer groups; give each worker a stable one so a restart reclaims its "
        "partitions at once (default: host name + process id)",
    )
    session_timeout(p)
    metrics_port(p)

    p = command("projector", _cmd_projector, "build the PostgreSQL projections from the event log", proc)
    p.add_argument(
        "--name",
        help="projector identity in the consumer group; give each projector a stable one so a restart "
        "reclaims its partitions at once (default: a random one)",
    )
    session_timeout(p)
    metrics_port(p)

    p = command(
        "serve", _cmd_serve, "serve the HTTP API (and the @webhook routes of the --app modules)", proc
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; set METAMORPH_API_TOKENS to expose)",
    )
    p.add_argument("--port", type=_port, default=8080)
    apps(p, False)
    p.add_argument(
        "--webhook-auth",
        choices=["none", "token", "signature"],
        help="webhook authentication (METAMORPH_WEBHOOK_AUTH; secrets only via the environment)",
    )
    metrics_port(p)

    p = command(
        "dev",
        _cmd_dev,
        "embedded broker and PostgreSQL (unless configured) + node + projector + HTTP API",
        proc,
    )
    apps(p, True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080)
    queues(p)
    partitions(p, "partitions when creating the topics (default 8)")
    p.add_argument("--data-dir", default=".metamorph/dev", metavar="DIR")
    metrics_port(p, 9464)

    p = command("demo", _cmd_demo, "run the tutorial order workflow end to end on an embedded stack")
    p.add_argument("--app", default="examples.orders", metavar="MODULE",
                   help="the tutorial module defining OrderWorkflow (default examples.orders, from the current directory)")

    p = command("bench", _cmd_bench, "run the benchmark workloads (W1-W7) on an embedded stack; see bench/RESULTS.md")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="...", help="options of `python -m bench`")

    p = command("start", _cmd_start, "start a workflow; prints its id", out)
    p.add_argument("type", metavar="TYPE", help="workflow type name")
    p.add_argument("args", nargs="*", metavar="JSON_ARGS", help="arguments, each JSON or else a plain string")
    p.add_argument("--id", help="workflow id (default: a new UUID); an existing id is not started twice")
    p.add_argument("--if-running", default="use_existing", choices=("use_existing", "fail", "terminate"),
                   help="when a run of ID is open: return it (default), refuse, or terminate it and start anew")
    p.add_argument("--if-closed", default="use_existing", choices=("use_existing", "fail", "allow", "allow_failed"),
                   help="when the last run of ID has ended: return it (default), refuse, or start a new run "
                        "(allow_failed: only if it did not complete)")
    p.add_argument("--start-signal", metavar="NAME", help="signal-with-start: delivered before the first step")
    p.add_argument("--start-signal-arg", action="append", metavar="JSON", help="an argument of the start signal (repeat)")
    p.add_argument("--start-delay", type=float, metavar="S", help="seconds before the first step")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds the whole execution may take (then timed_out)")
    p.add_argument("--search", action="append", metavar="KEY=VALUE",
                   help="a search attribute (value JSON if it parses, else a string; repeat)")
    p.add_argument("--memo", metavar="JSON", help="memo: a JSON object shown with the workflow")
    p.add_argument("--priority", type=int, metavar="N",
                   help="0 (first) .. 9: orders the run's activity tasks against others waiting on their queue (default 5)")

    for name, text in (("signal", "send a signal"), ("query", "ask a query"), ("update", "run an update")):
        p = command(name, _cmd_signal if name == "signal" else _cmd_query, text, out)
        p.add_argument("id", metavar="ID")
        p.add_argument("name", metavar="NAME")
        p.add_argument("args", nargs="*", metavar="JSON_ARGS")
        if name != "signal":
            p.add_argument(
                "--timeout", type=float, default=10.0, metavar="S", help="seconds to wait (default 10)"
            )

    command("status", _cmd_status, "show a workflow's status", out).add_argument("id", metavar="ID")
    p = command("result", _cmd_result, "wait for the end and print the output (exit 1 if it failed)", out)
    p.add_argument("id", metavar="ID")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 4)")
    def filters(p: argparse.ArgumentParser, times: bool = True) -> None:
        p.add_argument("--status")
        p.add_argument("--type")
        p.add_argument("--search", action="append", metavar="FILTER",
                       help="search attribute filter: key=value, key!=value, key>N (<, <=, >=), 'key in a,b'; "
                            "values are JSON when they parse (repeat: all must match)")
        if times:
            p.add_argument("--after", metavar="ISO", help="only workflows started at or after this time")
            p.add_argument("--before", metavar="ISO", help="only workflows started before this time")

    p = command("list", _cmd_list, "list workflows, newest first (one page; the next page's cursor on stderr)", out)
    filters(p)
    p.add_argument("--limit", type=_positive_int, default=100)
    p.add_argument("--cursor", metavar="C", help="the next_cursor printed by the previous page of the same query")
    p = command("count", _cmd_count, "count the workflows matching the list filters", out)
    filters(p)
    p = command("batch", _cmd_batch, "cancel, terminate, signal, pause or resume every open workflow matching the filters", out)
    p.add_argument("action", metavar="ACTION", help="cancel | terminate | signal | pause | resume")
    filters(p, times=False)
    p.add_argument("--reason", help="terminate, pause: the reason recorded")
    p.add_argument("--signal", metavar="NAME", help="signal: the signal name")
    p.add_argument("--arg", action="append", metavar="JSON", help="signal: an argument (repeat)")
    command("history", _cmd_history, "the current run's events (--json: the replayable history `replay` reads)", out).add_argument("id", metavar="ID")
    p = command("stream", _cmd_stream, "print the items the workflow streams, live, as JSON lines (ends with it)", out)
    p.add_argument("id", metavar="ID")
    p.add_argument("--after", type=int, default=0, metavar="N", help="start after position N (resume)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds (exit 4)")
    command(
        "exceptions", _cmd_exceptions, "failed activity attempts and the workflow's failure", out
    ).add_argument("id", metavar="ID")
    command("cancel", _cmd_cancel, "request cancellation", out).add_argument("id", metavar="ID")
    p = command("terminate", _cmd_terminate, "terminate at once (no cleanup code runs)", out)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason")
    p = command("retry", _cmd_retry, "reset a failed workflow", out)
    p.add_argument("id", metavar="ID")
    p.add_argument("--force", action="store_true", help="retry even if its saga already ran its compensations")
    p = command("pause", _cmd_pause, "take no step until resumed (signals, timers, results wait)", out)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason")
    command("resume", _cmd_resume, "end a pause: what waited is applied in order", out).add_argument("id", metavar="ID")
    p = command("reset", _cmd_reset, "a new run replaying history up to and including SEQ", out)
    p.add_argument("id", metavar="ID")
    p.add_argument("seq", metavar="SEQ", type=int)

    p = command("schedule", _cmd_schedule, "create, describe, list, pause, resume, trigger, backfill or delete schedules")
    actions = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    c = actions.add_parser("create", parents=[out], help="create a schedule (an existing id is updated)")
    c.add_argument("id", metavar="SCHEDULE_ID")
    c.add_argument("type", metavar="TYPE", help="workflow type each firing starts")
    c.add_argument("args", nargs="*", metavar="JSON_ARGS")
    c.add_argument("--cron", help="5-field cron expression (minute hour day month weekday)")
    c.add_argument("--every", type=float, metavar="S", help="fixed interval in seconds")
    c.add_argument("--timezone", default="UTC", help="IANA time zone of --cron (default UTC)")
    c.add_argument("--overlap", default="skip", help="skip (default), buffer_one, allow_all, cancel_other, terminate_other")
    c.add_argument("--catchup-window", type=float, default=3600.0, metavar="S")
    c.add_argument("--jitter", type=float, default=0.0, metavar="S")
    c.add_argument("--paused", action="store_true")
    c.add_argument("--start-at", metavar="ISO", help="no firing before this time (ISO 8601 with a zone, e.g. ...Z)")
    c.add_argument("--end-at", metavar="ISO", help="no firing after this time (ISO 8601 with a zone)")
    actions.add_parser("list", parents=[out], help="every schedule")
    for action, text in (("describe", "spec, next and recent runs"), ("pause", "stop firing"), ("resume", "fire again"),
                         ("trigger", "fire now"), ("delete", "end the schedule (started runs go on)"),
                         ("backfill", "fire every time of the spec in [START, END], honouring the overlap policy")):
        a = actions.add_parser(action, parents=[out], help=text)
        a.add_argument("id", metavar="SCHEDULE_ID")
        if action == "pause":
            a.add_argument("--note")
        if action == "backfill":
            a.add_argument("start", metavar="START", help="ISO 8601 time with a zone")
            a.add_argument("end", metavar="END", help="ISO 8601 time with a zone")

    p = command(
        "schemas",
        _cmd_schemas,
        "write the Avro schema (.avsc) of every command and event, with an index of fingerprints, to DIR",
        out,
    )
    p.add_argument("dir", metavar="DIR")

    p = command(
        "replay",
        _cmd_replay,
        "replay recorded histories (history --json files, or the last runs from PostgreSQL) against the code "
        "of the --app modules; one line per non-determinism, exit 1 if any",
    )
    apps(p, True)
    p.add_argument("paths", nargs="*", metavar="FILE_OR_DIR", help="history files; a directory: every *.json in it")
    p.add_argument("--type", metavar="T", help="replay recorded runs of this workflow type from PostgreSQL")
    p.add_argument(
        "--last", type=_positive_int, default=100, metavar="N", help="with --type: the N most recent runs (default 100)"
    )
    return parser


def _connection_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the connection options not given on the command line from METAMORPH_* (then the defaults)."""
    if not hasattr(args, "kafka"):
        # unset: None, not the declared default: `dev` starts its own broker then
        args.kafka = settings.get("METAMORPH_KAFKA") if settings.is_set("METAMORPH_KAFKA") else None
    if not hasattr(args, "postgres"):
        args.postgres = settings.get("METAMORPH_POSTGRES")
    if not hasattr(args, "namespace"):
        args.namespace = settings.get("METAMORPH_NAMESPACE")
    return args


# -- errors ----------------------------------------------------------------------------------------------
def _classify(exc: BaseException) -> tuple[int, str]:
    """Map an exception to (exit status, one-line message): the exit status from the error table the HTTP
    API shares (actors.errors.error_table), so a 409 there is always "refused" (6) here."""
    import psycopg
    from kafka.errors import KafkaError

    from actors.errors import INTERNAL, classify
    from actors.interfaces.dev import AppImportError

    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, AppImportError):
        return EXIT_USAGE, str(exc)
    kind = classify(exc)
    if kind.exit_code == EXIT_REFUSED:
        return EXIT_REFUSED, f"refused: {exc}"
    if isinstance(exc, KafkaError):
        return kind.exit_code, f"Kafka error: {exc}"
    if isinstance(exc, psycopg.OperationalError):
        return kind.exit_code, f"PostgreSQL is unreachable: {exc}"
    if isinstance(exc, TimeoutError):
        return kind.exit_code, str(exc) or "timed out"
    if kind is INTERNAL:
        return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
    return kind.exit_code, str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``metamorph`` command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and not {"-h", "--help"} & set(argv[1:2]):
        return int(_bench_main()(argv[1:]) or EXIT_OK)  # its own options, passed through untouched
    try:
        args = _connection_defaults(_parser().parse_args(argv))
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse already printed why
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if settings.get("METAMORPH_DEBUG"):
            raise
        code, message = _classify(exc)
        print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
        return code


def _recent_histories(conn: Any, workflow_type: str, last: int) -> list[Any]:
    """The ``last`` most recently started runs of ``workflow_type`` from the projections (newest first)."""
    from actors.engine import replayer
    from projections import read

    rows = conn.execute(
        "SELECT workflow_id, run_id FROM runs WHERE type = %s ORDER BY started_at DESC, workflow_id DESC LIMIT %s",
        (workflow_type, max(0, int(last))),
    ).fetchall()
    out = []
    for workflow_id, run_id in rows:
        events = read.history(conn, workflow_id, run_id)
        if events:
            out.append(replayer.load_history(events, workflow_id))
    return out


if __name__ == "__main__":
    sys.exit(main())
