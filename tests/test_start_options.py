"""Start options (docs/API.md §6) through ``WorkflowEnvironment``: the owner's decisions, without a broker.

The environment runs the same ``WorkflowInstance`` code a node runs, with a virtual clock, so the policy
decisions, signal-with-start, the start delay and the execution timeout are checked here exactly and fast;
``test_start_options_runtime.py`` checks the same through Kafka, the node and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from actors import WorkflowAlreadyStarted, WorkflowTerminated, WorkflowTimedOut
from actors.testing import WorkflowEnvironment
from tests.apps.policies_app import Fails, Gate, Quick, Relay, Sleeper


def _run_id(env: WorkflowEnvironment, wid: str) -> str:
    return env.instances[wid].run_id


def _replays_cleanly(env: WorkflowEnvironment, wid: str) -> None:
    """A restarted node rebuilds the run from history to the same status, deciding nothing new."""
    fresh = env.replay(wid)
    assert fresh.status == env.status(wid)
    assert fresh.run is None or fresh.run.blocked is None


def test_if_running_fail_use_existing_and_terminate():
    env = WorkflowEnvironment()
    env.start(Gate, "a", id="g")
    first = _run_id(env, "g")
    with pytest.raises(WorkflowAlreadyStarted) as refused:
        env.start(Gate, "b", id="g", if_running="fail")
    assert refused.value.workflow_id == "g" and refused.value.run_id == first
    env.start(Gate, "c", id="g")  # use_existing: the same run goes on
    assert _run_id(env, "g") == first and env.status("g") == "waiting"

    env.start(Gate, "d", id="g", if_running="terminate")
    second = _run_id(env, "g")
    assert second != first and env.status("g") == "waiting"
    assert env.history("g")[0]["input"] and env.query("g", "first") == []
    env.signal("g", "add", "go")
    assert env.result("g")["tag"] == "d"


def test_if_running_terminate_records_replaced_on_the_old_run():
    env = WorkflowEnvironment()
    env.start(Gate, "a", id="g")
    old = env.instances["g"]
    old_history = old.history
    env.start(Gate, "b", id="g", if_running="terminate")
    assert old_history[-1]["type"] == "WorkflowTerminated" and old_history[-1]["reason"] == "replaced"


def test_if_closed_policies():
    env = WorkflowEnvironment()
    env.start(Quick, "one", id="q")
    done = _run_id(env, "q")
    assert env.result("q")["tag"] == "one"
    env.start(Quick, "two", id="q")  # the default: the finished run stands
    assert _run_id(env, "q") == done and env.result("q")["tag"] == "one"
    with pytest.raises(WorkflowAlreadyStarted, match="completed"):
        env.start(Quick, "three", id="q", if_closed="fail")
    with pytest.raises(WorkflowAlreadyStarted):
        env.start(Quick, "four", id="q", if_closed="allow_failed")  # completed is not a failure
    env.start(Quick, "five", id="q", if_closed="allow")
    assert _run_id(env, "q") != done and env.result("q") == {"tag": "five", "run_id": _run_id(env, "q"),
                                                             "first_step_at": env.result("q")["first_step_at"]}
    _replays_cleanly(env, "q")


def test_if_closed_allow_failed_reruns_a_failed_id():
    env = WorkflowEnvironment()
    env.start(Fails, "x", id="f")
    assert env.status("f") == "failed"
    failed_run = _run_id(env, "f")
    env.start(Quick, "again", id="f", if_closed="allow_failed")  # a new run may even be of another type
    assert _run_id(env, "f") != failed_run and env.result("f")["tag"] == "again"


def test_start_signal_is_seen_before_the_first_step_and_goes_to_an_open_run():
    env = WorkflowEnvironment()
    env.start(Gate, "s", id="s", start_signal="add", start_signal_args=["early"])
    assert env.query("s", "first") == ["early"]
    env.start(Gate, "ignored", id="s", start_signal="add", start_signal_args=["go"])  # running: delivered
    assert env.result("s") == {"tag": "s", "first": ["early"], "seen": ["early", "go"], "run_id": _run_id(env, "s")}
    _replays_cleanly(env, "s")


def test_start_signal_unknown_name_is_recorded_and_the_run_goes_on():
    env = WorkflowEnvironment()
    env.start(Gate, "s", id="s2", start_signal="nope")
    rejected = [e for e in env.history("s2") if e["type"] == "CommandRejected"]
    assert env.status("s2") == "waiting" and rejected and rejected[0]["error_type"] == "UnknownSignal"


def test_start_delay_holds_the_first_step():
    env = WorkflowEnvironment()
    started = env.now
    env.start(Gate, "d", id="d", start_delay=60, start_signal="add", start_signal_args=["x"])
    assert env.status("d") == "pending" and env.query("d", "first") is None
    env.signal("d", "add", "during")  # signals wait in the instance, as for any waiting workflow
    env.sleep(59)
    assert env.status("d") == "pending" and env.query("d", "first") is None
    env.sleep(2)
    assert env.query("d", "first") == ["x", "during"]
    assert env.query("d", "first_step_time") >= (started + timedelta(seconds=60)).timestamp()
    _replays_cleanly(env, "d")
    env.signal("d", "add", "go")
    assert env.result("d")["first"] == ["x", "during"]


def test_timeout_ends_the_run_timed_out():
    env = WorkflowEnvironment()
    env.start(Sleeper, 3600, id="t", timeout=timedelta(minutes=5))
    with pytest.raises(WorkflowTimedOut):
        env.result("t")
    assert env.status("t") == "timed_out" and env.history("t")[-1]["type"] == "WorkflowTimedOut"
    _replays_cleanly(env, "t")
    env.start(Sleeper, 1, id="t2", timeout=60)  # finishing first: the deadline does nothing
    assert env.result("t2") == "woke"


def test_timeout_spans_a_continue_as_new_chain():
    env = WorkflowEnvironment()
    env.start(Relay, 10, 100, id="r", timeout=35)
    with pytest.raises(WorkflowTimedOut):
        env.result("r")
    runs = {e["run_id"] for e in env.history("r")}
    assert len(runs) == 1 and env.history("r")[0]["continued_from"]  # timed out in a later run of the chain


def test_terminated_then_allowed_id_reports_the_new_run():
    env = WorkflowEnvironment()
    env.start(Gate, "a", id="x")
    env.terminate("x")
    with pytest.raises(WorkflowTerminated):
        env.result("x")
    env.start(Gate, "b", id="x", if_closed="allow_failed")
    assert env.status("x") == "waiting"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"if_running": "replace"}, "unknown if_running policy 'replace'"),
        ({"if_closed": "always"}, "unknown if_closed policy 'always'"),
        ({"start_delay": -1}, "start_delay must be zero or more seconds"),
        ({"timeout": -5}, "timeout must be more than zero seconds"),
        ({"timeout": 0}, "timeout must be more than zero seconds"),
        ({"timeout": "10"}, "timeout must be seconds"),
        ({"start_signal": ""}, "start_signal must be a signal name"),
        ({"start_signal_args": ["x"]}, "start_signal_args given without start_signal"),
    ],
)
def test_bad_start_options_are_refused_before_anything_is_sent(options, message):
    env = WorkflowEnvironment()
    with pytest.raises(ValueError, match=message):
        env.start(Quick, "q", id="bad", **options)
    assert "bad" not in env.instances


class _RaceClient:
    """Stands in for the Client at the moment of the race: the first read of the row still shows the old run,
    and by the time ``run_known`` is asked the projector has committed the new one."""

    def __init__(self) -> None:
        self.rows = [
            {"id": "w", "run_id": "old-run", "status": "completed", "output": {"tag": "one"}},
            {"id": "w", "run_id": "new-run", "status": "running", "output": None},
        ]

    def _require(self, workflow_id: str) -> dict:
        return self.rows.pop(0) if len(self.rows) > 1 else self.rows[0]

    def _read(self, fn: str, *args: object) -> bool:
        assert fn == "run_known"
        return True


def test_a_handle_of_a_new_run_never_answers_with_the_row_of_an_older_run():
    """``describe()`` read the row, then learnt the new run was projected, and returned the stale row: the
    result of a run started with ``if_closed="allow"`` came back as the previous run's (seen in CI)."""
    from actors.client.sync import WorkflowHandle

    handle = WorkflowHandle(_RaceClient(), "w", "new-run")  # type: ignore[arg-type]
    row = handle.describe()
    assert row["run_id"] == "new-run" and row["status"] == "running"
