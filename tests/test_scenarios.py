"""One scenario suite, two engines: the in-memory ``WorkflowEnvironment`` and a real node on Kafka.

Why: the test environment is what users test their workflows with. If it answers differently from a node
(an activity's failure, a result's size, a signal's timing), their tests pass and production fails. Every
scenario here runs against both, with the same expected outcome written once, so the two cannot drift
apart unnoticed. Scenarios use the shared test app (``tests/apps/runtime_app.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

from actors import Client
from actors.testing import WorkflowEnvironment
from tests.apps import runtime_app as app
from tests.processes import wait_until
from tests.stack import module_stack


class Engine(Protocol):
    """The few operations a scenario needs, over either engine."""

    def start(self, wf: type, *args: Any) -> str: ...
    def signal(self, workflow_id: str, name: str, *args: Any) -> None: ...
    def query(self, workflow_id: str, name: str, *args: Any) -> Any: ...
    def update(self, workflow_id: str, name: str, *args: Any) -> Any: ...
    def result(self, workflow_id: str) -> Any: ...
    def eventually(self, check: Callable[[], bool], what: str) -> None: ...


class InMemory:
    def __init__(self) -> None:
        self.env = WorkflowEnvironment()

    def start(self, wf: type, *args: Any) -> str:
        return self.env.start(wf, *args, id=f"sc-{uuid.uuid4().hex[:8]}")

    def signal(self, workflow_id: str, name: str, *args: Any) -> None:
        self.env.signal(workflow_id, name, *args)

    def query(self, workflow_id: str, name: str, *args: Any) -> Any:
        return self.env.query(workflow_id, name, *args)

    def update(self, workflow_id: str, name: str, *args: Any) -> Any:
        return self.env.update(workflow_id, name, *args)

    def result(self, workflow_id: str) -> Any:
        return self.env.result(workflow_id)

    def eventually(self, check: Callable[[], bool], what: str) -> None:
        self.env.run_until_idle()
        assert check(), what


class OnKafka:
    def __init__(self, client: Client) -> None:
        self.client = client

    def start(self, wf: type, *args: Any) -> str:
        return self.client.start(wf, *args, id=f"sc-{uuid.uuid4().hex[:8]}").id

    def signal(self, workflow_id: str, name: str, *args: Any) -> None:
        self.client.get(workflow_id).signal(name, *args)

    def query(self, workflow_id: str, name: str, *args: Any) -> Any:
        return self.client.get(workflow_id).query(name, *args)

    def update(self, workflow_id: str, name: str, *args: Any) -> Any:
        return self.client.get(workflow_id).update(name, *args)

    def result(self, workflow_id: str) -> Any:
        return self.client.get(workflow_id).result(timeout=60)

    def eventually(self, check: Callable[[], bool], what: str) -> None:
        wait_until(check, 30, what)


@pytest.fixture(scope="module")
def kafka_client(kafka_server: Any, pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with module_stack(kafka_server, pg_server, tmp_path_factory.mktemp("node"), "sc") as client:
        yield client


@pytest.fixture(params=["memory", "kafka"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "memory":
        return InMemory()
    return OnKafka(request.getfixturevalue("kafka_client"))


def test_an_activity_result_comes_back(engine: Engine) -> None:
    assert engine.result(engine.start(app.Hello, "ada")) == "hello ada"


def test_sequential_activities_run_in_order(engine: Engine) -> None:
    assert engine.result(engine.start(app.Chain, "c", 3)) == "hello c/2"


def test_gather_fans_out_and_keeps_input_order(engine: Engine) -> None:
    assert engine.result(engine.start(app.FanOut, "f", 6)) == "6:hello f/5"


def test_a_failing_activity_is_retried_then_reported(engine: Engine) -> None:
    assert engine.result(engine.start(app.Timeouts, "fails")) == "RuntimeError after 3"


def test_a_non_retryable_error_is_not_retried(engine: Engine) -> None:
    assert engine.result(engine.start(app.Timeouts, "refuses")) == "NonRetryableError after 1"


def test_an_oversize_activity_result_fails_the_attempt_the_same_way(engine: Engine) -> None:
    """The divergence the restructure issue found: a 2 MB result passed in the test environment and
    failed on a node. Both must treat it as a failed attempt of a too-large payload."""
    outcome = engine.result(engine.start(app.Timeouts, "big"))
    assert len(outcome) < 1000, f"the {len(outcome)}-character result was accepted: {outcome[:60]}..."
    assert outcome == "PayloadTooLarge after 1"


def test_signal_query_and_update(engine: Engine) -> None:
    wid = engine.start(app.Signalled, "s")
    assert engine.update(wid, "add", "x") == 1
    assert engine.update(wid, "add", "y") == 2
    engine.eventually(lambda: engine.query(wid, "count") == 2, "the updates are visible to a query")
    engine.signal(wid, "go", "v")
    assert engine.result(wid) == "hello s/v"


def test_children_results_are_collected(engine: Engine) -> None:
    assert engine.result(engine.start(app.Parent, 3)) == 0 + 1 + 2


def test_continue_as_new_chain_ends_with_the_last_runs_result(engine: Engine) -> None:
    assert engine.result(engine.start(app.Looping, 3)) == 99


def test_a_durable_timer_fires(engine: Engine) -> None:
    assert engine.result(engine.start(app.Sleepy, 0.3)) == "rested"


def test_signals_across_continue_as_new_arrive_in_order(engine: Engine) -> None:
    wid = engine.start(app.SignalCounter, 7, 3, [])
    for i in range(7):
        engine.signal(wid, "bump", f"s{i}")
    assert engine.result(wid) == [f"s{i}" for i in range(7)]
