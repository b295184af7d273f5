"""OpenTelemetry tracing (docs/API.md §12, issue 13 item 6) on real Kafka, with the SDK's in-memory exporter.

One trace covers start → step → activity attempt → step → completion, with the parent/child links of the
causal chain, whether the activity runs inside the node (eager dispatch) or in a worker reached through the
activity topic; a run keeps its trace across steps with no traced sender and across a node restart (its
start context is recorded in WorkflowStarted). Without the extra configured nothing changes, and
OpenTelemetry is not even imported.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors import Client, tracing
from actors.activities.worker import ActivityWorker
from actors.node.loop import Node
from eventstore.topics import ensure_topics
from projections.migrate import migrate
from projections.projector import Projector
from tests.apps.traced_app import Traced, Waits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exporter():
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.configure(provider)
    yield spans
    tracing.disable()


@pytest.fixture
def servers(kafka_server, pg_server):
    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    return kafka_server.bootstrap, pg_server


class _Stack:
    """A namespace with a node (eager activities or none), optionally a separate worker, and a projector."""

    def __init__(self, kafka: str, pg_server, data_dir: Path, worker: bool) -> None:
        self.kafka, self.data_dir, self.worker_wanted = kafka, data_dir, worker
        self.namespace = "tr" + uuid.uuid4().hex[:8]
        self.postgres = pg_server.create_database(self.namespace)
        ensure_topics(kafka, self.namespace, partitions=2)
        migrate(self.postgres, self.namespace)
        self.stop_projector = threading.Event()
        self.worker: ActivityWorker | None = None

    def node(self) -> Node:
        node = Node(self.kafka, self.namespace, data_dir=self.data_dir, run_activities=not self.worker_wanted).start()
        assert node.wait_ready(30)
        return node

    def __enter__(self) -> _Stack:
        self.current = self.node()
        if self.worker_wanted:
            self.worker = ActivityWorker(self.kafka, self.namespace, concurrency=4).start()
        threading.Thread(target=Projector(self.kafka, self.postgres, self.namespace).run, args=(self.stop_projector,),
                         daemon=True).start()
        self.client = Client(self.kafka, self.postgres, self.namespace)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.stop_projector.set()
        if self.worker is not None:
            self.worker.stop()
        self.current.stop()


def _wait_for(exporter, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        spans = exporter.get_finished_spans()
        if predicate(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def _steps(spans, wid: str) -> list:
    return sorted((s for s in spans if s.name.startswith("metamorph.step") and s.attributes.get("metamorph.workflow.id") == wid),
                  key=lambda s: s.start_time)


def _check_end_to_end(exporter, client: Client, wid: str) -> None:
    assert client.start(Traced, "ab", id=wid) is not None
    assert client.get(wid).result(timeout=60) == "AB!"
    start = next(s for s in exporter.get_finished_spans()
                 if s.name == "metamorph.start traced.Traced" and s.attributes.get("metamorph.workflow.id") == wid)
    trace_id = start.context.trace_id
    spans = _wait_for(exporter, lambda ss: any("WorkflowCompleted" in s.attributes.get("metamorph.events", "") for s in _steps(ss, wid))
                      and any(link.context.trace_id == trace_id for s in ss if s.name == "metamorph.project" for link in s.links))
    steps = _steps(spans, wid)
    attempts = sorted((s for s in spans if s.name == "metamorph.activity traced.work" and s.attributes["metamorph.workflow.id"] == wid),
                      key=lambda s: s.start_time)
    assert len(attempts) == 2 and len(steps) >= 4
    # One trace: start, every step, every attempt.
    assert {s.context.trace_id for s in [start, *steps, *attempts]} == {trace_id}
    by_id = {s.context.span_id: s for s in spans}
    first = steps[0]
    assert first.parent.span_id == start.context.span_id and "StartWorkflow" in first.attributes["metamorph.commands"]
    # The attempt is a child of the step that scheduled it; the step that records its result, of the attempt.
    assert by_id[attempts[0].parent.span_id] is first
    completed = next(s for s in steps if "CompleteActivity" in s.attributes["metamorph.commands"])
    assert completed.parent.span_id == attempts[0].context.span_id
    # The timer's step has no sender: it is a child of the run's recorded start context.
    timer = next(s for s in steps if s.attributes["metamorph.commands"] == "FireTimer")
    assert timer.parent.span_id == start.context.span_id
    assert by_id[attempts[1].parent.span_id] is timer
    final = next(s for s in steps if "WorkflowCompleted" in s.attributes["metamorph.events"])
    assert final.parent.span_id == attempts[1].context.span_id and final.attributes["metamorph.status"] == "completed"
    # The projector's batch that projected the start links to the run's trace.
    assert any(link.context.trace_id == trace_id for s in spans if s.name == "metamorph.project" for link in s.links)


def test_one_trace_from_start_to_completion_eager_activities(exporter, servers, tmp_path):
    kafka, pg_server = servers
    with _Stack(kafka, pg_server, tmp_path / "node", worker=False) as stack:
        _check_end_to_end(exporter, stack.client, "eager-1")


def test_one_trace_through_the_activity_topic_and_a_node_restart(exporter, servers, tmp_path):
    kafka, pg_server = servers
    with _Stack(kafka, pg_server, tmp_path / "node", worker=True) as stack:
        _check_end_to_end(exporter, stack.client, "topic-1")  # tasks and outcomes cross Kafka with headers
        h = stack.client.start(Waits, id="restart-1")
        spans = _wait_for(exporter, lambda ss: len(_steps(ss, "restart-1")) >= 1)
        start = next(s for s in spans if s.name == "metamorph.start traced.Waits")
        # A new node process restores the run from the event log (a fresh data dir: nothing cached).
        stack.current.stop()
        stack.data_dir = stack.data_dir.parent / "node2"
        stack.current = stack.node()
        stack.client._send("SignalWorkflow", "restart-1", name="go", input=b'["x"]')  # no span: no trace headers
        assert h.result(timeout=60) == "X"
        spans = _wait_for(exporter, lambda ss: any("WorkflowCompleted" in s.attributes.get("metamorph.events", "")
                                                   for s in _steps(ss, "restart-1")))
        steps = _steps(spans, "restart-1")
        signalled = next(s for s in steps if s.attributes["metamorph.commands"] == "SignalWorkflow")
        assert signalled.context.trace_id == start.context.trace_id and signalled.parent.span_id == start.context.span_id
        assert {s.context.trace_id for s in steps} == {start.context.trace_id}


def test_a_traced_signal_is_the_parent_of_its_step_and_linked_to_the_run(exporter, servers, tmp_path):
    kafka, pg_server = servers
    with _Stack(kafka, pg_server, tmp_path / "node", worker=False) as stack:
        h = stack.client.start(Waits, id="sig-1")
        _wait_for(exporter, lambda ss: _steps(ss, "sig-1"))  # so the signal is a step of its own
        h.signal("go", "y")
        assert h.result(timeout=60) == "Y"
        spans = _wait_for(exporter, lambda ss: any(s.attributes.get("metamorph.commands") == "SignalWorkflow" for s in _steps(ss, "sig-1")))
        sent = next(s for s in spans if s.name == "metamorph.signal go" and s.attributes["metamorph.workflow.id"] == "sig-1")
        start = next(s for s in spans if s.name == "metamorph.start traced.Waits" and s.attributes["metamorph.workflow.id"] == "sig-1")
        step = next(s for s in _steps(spans, "sig-1") if s.attributes["metamorph.commands"] == "SignalWorkflow")
        assert step.parent.span_id == sent.context.span_id
        if sent.context.trace_id != start.context.trace_id:
            assert any(link.context.span_id == start.context.span_id for link in step.links)
        # The AsyncClient's start and signal carry their context the same way.
        from actors import AsyncClient

        async def main() -> str:
            async with AsyncClient(kafka, stack.postgres, stack.namespace) as aclient:
                ah = await aclient.start(Waits, id="async-1")
                await asyncio.to_thread(_wait_for, exporter, lambda ss: _steps(ss, "async-1"))
                await ah.signal("go", "z")
                return await ah.result(timeout=60)

        assert asyncio.run(main()) == "Z"
        spans = _wait_for(exporter, lambda ss: any(s.attributes.get("metamorph.commands") == "SignalWorkflow" for s in _steps(ss, "async-1")))
        astart = next(s for s in spans if s.name == "metamorph.start traced.Waits" and s.attributes["metamorph.workflow.id"] == "async-1")
        asent = next(s for s in spans if s.name == "metamorph.signal go" and s.attributes["metamorph.workflow.id"] == "async-1")
        asteps = _steps(spans, "async-1")
        assert asteps[0].parent.span_id == astart.context.span_id
        assert next(s for s in asteps if s.attributes["metamorph.commands"] == "SignalWorkflow").parent.span_id == asent.context.span_id


def _run_without_otel(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import opentelemetry`` fails, as without the extra."""
    prelude = "import sys\nsys.modules['opentelemetry'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, **(env or {})})


def test_without_the_extra_nothing_breaks_and_nothing_is_imported():
    done = _run_without_otel("""
        import sys
        from actors import tracing
        from actors.testing import WorkflowEnvironment
        import actors.node.loop, actors.activities.worker, actors.client.sync, projections.projector
        from tests.apps.traced_app import Traced
        env = WorkflowEnvironment()
        assert env.result(env.start(Traced, "ok")) == "OK!"
        assert not tracing.enabled() and tracing.outgoing_headers() is None
        with tracing.span("x") as s:
            assert s is None
        assert not [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m] is not None]
        try:
            tracing.configure()
        except ImportError as exc:
            print("ERR", exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "ERR tracing needs OpenTelemetry: pip install 'metamorph[otel]'" in done.stdout


def test_untraced_process_imports_no_opentelemetry_even_when_installed():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from actors.testing import WorkflowEnvironment
        import actors.node.loop, actors.activities.worker, actors.client.sync, projections.projector
        from actors import Client
        from tests.apps.traced_app import Traced
        Client("127.0.0.1:1")
        env = WorkflowEnvironment()
        assert env.result(env.start(Traced, "ok")) == "OK!"
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_env_var_turns_tracing_on():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from actors import Client, tracing
        Client("127.0.0.1:1")
        print(tracing.enabled())
    """)], cwd=ROOT, capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "METAMORPH_TRACING": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_events_written_before_the_trace_field_still_decode():
    """Nodes of the previous release wrote WorkflowStarted without ``trace`` (EventEnvelope v8 frozen)."""
    import json as _json
    from datetime import UTC, datetime

    from eventstore import codec
    from eventstore.events import from_envelope

    old = _json.loads((codec.SCHEMA_DIR / "history" / "metamorph.EventEnvelope.v8.avsc").read_text())
    body = {"workflow_type": "t", "input": b"[]", "command_id": "c"}
    envelope = {"workflow_id": "w", "run_id": "r", "seq": 1, "epoch": 1, "at": datetime(2030, 1, 1, tzinfo=UTC),
                "status": None, "node": "n", "event": ("metamorph.events.WorkflowStarted", body)}
    data = codec.registry().encode("metamorph.EventEnvelope", envelope, schema=old)
    event = from_envelope(codec.decode(data, "metamorph.EventEnvelope"))
    assert event["type"] == "WorkflowStarted" and event["trace"] is None
