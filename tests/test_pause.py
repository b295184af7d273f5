"""Pause/resume and reset (docs/API.md §7) through ``WorkflowEnvironment``: the owner's logic, fast.

The environment runs the very ``WorkflowInstance`` a node runs, with a virtual clock, so "the timer's
time passes and nothing happens" is checked exactly; ``test_pause_runtime.py`` checks the same through
Kafka, a node, the projector and PostgreSQL.
"""

from __future__ import annotations

from actors.testing import WorkflowEnvironment
from tests.apps.pause_app import Napper, Steps


def _replays_cleanly(env: WorkflowEnvironment, wid: str) -> None:
    """A restarted node rebuilds the run from history to the same status, deciding nothing new."""
    fresh = env.replay(wid)
    assert fresh.status == env.status(wid)
    assert fresh.run is None or fresh.run.blocked is None


def test_paused_workflow_takes_no_step_until_resumed():
    env = WorkflowEnvironment()
    env.start(Napper, 60, 2, id="nap")
    assert env.status("nap") == "waiting"
    env.pause("nap", reason="maintenance")
    assert env.status("nap") == "paused"
    env.sleep(3600)  # the timer's time passes: its FireTimer is kept, not applied
    env.signal("nap", "add", "a")
    env.signal("nap", "add", "b")
    assert env.status("nap") == "paused"
    assert env.query("nap", "state") == {"woke": False, "items": []}
    kinds = [e["type"] for e in env.history("nap")]
    assert "TimerFired" not in kinds and "SignalReceived" not in kinds and kinds.count("CommandDeferred") == 3
    _replays_cleanly(env, "nap")
    env.resume("nap")
    assert env.result("nap") == {"items": ["a", "b"], "after": "did last"}
    kinds = [e["type"] for e in env.history("nap")]
    resumed = kinds.index("WorkflowResumed")
    assert kinds[resumed + 1:resumed + 4] == ["TimerFired", "SignalReceived", "SignalReceived"]
    _replays_cleanly(env, "nap")


def test_pause_is_idempotent_and_refused_once_the_workflow_has_ended():
    env = WorkflowEnvironment()
    env.start(Napper, 1, 0, id="p2")
    env.pause("p2")
    env.pause("p2", reason="again")
    assert [e["type"] for e in env.history("p2")].count("WorkflowPaused") == 1
    env.resume("p2")
    env.resume("p2")  # resuming a running workflow changes nothing
    assert [e["type"] for e in env.history("p2")].count("WorkflowResumed") == 1
    assert env.result("p2")["items"] == []
    before = list(env.history("p2"))
    env.pause("p2")  # dead-lettered by the owner: nothing recorded
    assert env.history("p2") == before and env.status("p2") == "completed"


def test_a_paused_workflow_survives_a_restart_with_its_deferred_commands():
    """The deferred commands are in history, so a node taking over the partition still applies them."""
    env = WorkflowEnvironment()
    env.start(Napper, 60, 1, id="p3")
    env.pause("p3")
    env.sleep(120)
    env.signal("p3", "add", "x")
    env.reload("p3")
    assert env.status("p3") == "paused"
    env.resume("p3")
    assert env.result("p3")["items"] == ["x"]


def test_reset_re_executes_from_the_chosen_event():
    env = WorkflowEnvironment()
    env.start(Steps, id="s")
    assert env.result("s") == ["did one", "did two", "did three"]
    old = env.instances["s"].run_id
    history = env.history("s")
    cut = next(e["seq"] for e in history if e["type"] == "ActivityCompleted")  # "one" done
    calls = len(env.activity_calls)
    env.reset("s", cut)
    assert env.instances["s"].run_id != old
    assert env.result("s") == ["did one", "did two", "did three"]
    rerun = [c[2] for c in env.activity_calls[calls:]]
    assert rerun == [["two"], ["three"]]
    _replays_cleanly(env, "s")


def test_reset_of_an_open_run_terminates_it_with_reason_reset():
    env = WorkflowEnvironment()
    env.start(Napper, 60, 1, id="r2")
    old_history = env.instances["r2"].history
    env.reset("r2", 1)
    assert old_history[-1]["type"] == "WorkflowTerminated" and old_history[-1]["reason"] == "reset"
    assert env.status("r2") == "waiting"
    env.signal("r2", "add", "y")
    assert env.result("r2")["items"] == ["y"]


def test_reset_to_a_seq_the_run_does_not_have_changes_nothing():
    env = WorkflowEnvironment()
    env.start(Napper, 60, 1, id="r3")
    run = env.instances["r3"].run_id
    before = list(env.history("r3"))
    for bogus in (0, -3, before[-1]["seq"] + 1, 10_000):
        env.reset("r3", bogus)
        assert env.instances["r3"].run_id == run and env.history("r3") == before
    assert env.status("r3") == "waiting"


def test_an_activity_running_at_the_pause_finishes_and_its_result_waits_for_the_resume():
    """No new activity task is sent while paused; the running one's result is kept, not lost."""
    env = WorkflowEnvironment(activity_durations={"pz.step": 10})
    env.start(Steps, id="a")
    assert env.status("a") == "running"
    env.pause("a")
    env.sleep(60)
    assert [c[2] for c in env.activity_calls] == [["one"]]
    kinds = [e["type"] for e in env.history("a")]
    assert kinds.count("ActivityScheduled") == 1 and "ActivityCompleted" not in kinds
    assert kinds[-1] == "CommandDeferred" and env.status("a") == "paused"
    env.resume("a")
    assert env.result("a") == ["did one", "did two", "did three"]
    assert [c[2] for c in env.activity_calls] == [["one"], ["two"], ["three"]]
    _replays_cleanly(env, "a")


def test_reset_to_a_timer_still_open_at_the_cut_waits_for_it_in_the_new_run():
    env = WorkflowEnvironment()
    env.start(Napper, 60, 1, id="t")
    started = next(e["seq"] for e in env.history("t") if e["type"] == "TimerStarted")
    env.reset("t", started)
    assert env.status("t") == "waiting" and env.query("t", "state")["woke"] is False
    env.sleep(61)
    assert env.query("t", "state")["woke"] is True
    env.signal("t", "add", "w")
    assert env.result("t")["items"] == ["w"]
