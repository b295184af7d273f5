"""Racing awaitables in workflow code (docs/API.md §10) and cancelling what lost, without a broker.

``WorkflowEnvironment(activity_durations=...)`` makes an activity take virtual time, so a timer can beat
it or lose to it. Every scenario is replayed from its recorded history: the rebuilt run must take the same
branch and record the same cancellations (no new decision, no nondeterminism).
"""

from __future__ import annotations

import asyncio

import pytest

from actors import (
    ActivityCancelled,
    ActivityFailed,
    NonRetryableError,
    Workflow,
    activity,
    heartbeat,
    workflow,
)
from actors.activities.worker import ActivityInfo, _Context, _context
from actors.engine.instance import WorkflowInstance
from actors.testing import WorkflowEnvironment


@activity(name="race.slow")
def slow(x: str) -> str:
    return f"slow {x}"


@activity(name="race.doomed")
def doomed(x: str) -> str:
    raise NonRetryableError(f"no {x}")


SLOW = {"race.slow": 60.0, "race.doomed": 1.0}


def _types(env: WorkflowEnvironment, wid: str) -> list[str]:
    return [e["type"] for e in env.history(wid)]


def replays_cleanly(env: WorkflowEnvironment, wid: str) -> None:
    """Rebuilt from its history, the run takes the same branch: no new decision, the same status."""
    fresh = WorkflowInstance(wid)
    assert fresh.load(env.history(wid)) == []
    assert fresh.run is not None and fresh.run.blocked is None
    assert fresh.status == env.status(wid)


class ActivityVsTimer(Workflow):
    name = "race.ActivityVsTimer"

    async def execute(self, timer: float) -> list:
        index, value = await workflow.first([workflow.activity(slow, "a"), workflow.timer(timer)])
        return [index, value]


class FailingWinner(Workflow):
    name = "race.FailingWinner"

    async def execute(self) -> str:
        try:
            await workflow.first([workflow.timer(30), workflow.activity(doomed, "luck")])
        except ActivityFailed as exc:
            return f"lost: {exc.error_type}"
        return "no failure"


def test_a_timer_beats_a_slow_activity_which_is_cancelled_and_never_runs():
    env = WorkflowEnvironment(activity_durations=SLOW)
    wid = env.start(ActivityVsTimer, 5)
    assert env.result(wid) == [1, None]
    types = _types(env, wid)
    assert types.index("TimerFired") < types.index("ActivityCancelRequested") < types.index("WorkflowCompleted")
    scheduled = next(e for e in env.history(wid) if e["type"] == "ActivityScheduled")
    assert (wid, scheduled["run_id"], scheduled["activity_id"]) in env.cancelled_activities
    env.sleep(120)  # the activity's time comes: it was cancelled while queued, so it is dropped
    assert env.dropped_activities == ["race.slow"]
    assert "ActivityCompleted" not in _types(env, wid)
    replays_cleanly(env, wid)


def test_a_fast_activity_beats_a_timer_which_stops():
    env = WorkflowEnvironment(activity_durations={"race.slow": 1.0})
    started = env.now
    wid = env.start(ActivityVsTimer, 3600)
    assert env.result(wid) == [0, "slow a"]
    types = _types(env, wid)
    assert types.index("ActivityCompleted") < types.index("TimerCancelled") < types.index("WorkflowCompleted")
    assert "TimerFired" not in types and not env.cancelled_activities
    assert (env.now - started).total_seconds() < 60  # the hour-long timer did not hold anything up
    env.sleep(7200)
    assert "TimerFired" not in _types(env, wid)
    replays_cleanly(env, wid)


def test_a_winner_that_failed_raises_its_error_and_the_loser_is_cancelled():
    env = WorkflowEnvironment(activity_durations=SLOW)
    wid = env.start(FailingWinner)
    assert env.result(wid) == "lost: NonRetryableError"
    assert "TimerCancelled" in _types(env, wid)
    replays_cleanly(env, wid)


def test_a_replay_of_a_race_that_went_the_other_way_is_nondeterminism():
    """The branch is in the history: the same code, fed a history where the timer won, replays the timer's
    branch; a history whose recorded cancellation does not match is refused, not silently re-decided."""
    env = WorkflowEnvironment(activity_durations=SLOW)
    wid = env.start(ActivityVsTimer, 5)
    env.result(wid)
    history = env.history(wid)
    fresh = WorkflowInstance(wid)
    assert fresh.load(history) == [] and fresh.run.instance is not None
    tampered = [dict(e) for e in history]
    for e in tampered:
        if e["type"] == "ActivityCancelRequested":
            e["activity_id"] = 999
    broken = WorkflowInstance(wid)
    broken.load(tampered)
    assert broken.run is None or broken.run.blocked is not None


class Child(Workflow):
    name = "race.Child"

    async def execute(self) -> str:
        await workflow.timer(3600)
        return "grown up"


class ChildVsTimer(Workflow):
    name = "race.ChildVsTimer"

    async def execute(self, key: str) -> int:
        index, _ = await workflow.first([workflow.child(Child, id=f"{key}-child"), workflow.timer(10)])
        return index


def test_a_child_that_loses_is_cancelled():
    env = WorkflowEnvironment()
    wid = env.start(ChildVsTimer, "c1")
    assert env.result(wid) == 1
    assert "ChildCancelRequested" in _types(env, wid)
    assert env.status("c1-child") == "cancelled"
    replays_cleanly(env, wid)


class CoroutineVsTimer(Workflow):
    name = "race.CoroutineVsTimer"

    def __init__(self) -> None:
        self.saw_cancel = False

    async def steps(self) -> str:
        try:
            first = await workflow.activity(slow, "1")
            return first + await workflow.activity(slow, "2")
        except asyncio.CancelledError:
            self.saw_cancel = True
            raise

    async def execute(self) -> list:
        index, _ = await workflow.first([self.steps(), workflow.timer(90)])
        return [index, self.saw_cancel]


def test_a_coroutine_that_loses_gets_cancelled_error_and_its_activity_is_cancelled():
    env = WorkflowEnvironment(activity_durations=SLOW)
    wid = env.start(CoroutineVsTimer)
    assert env.result(wid) == [1, True]  # the first step took 60 s, the second was still running at 90 s
    assert _types(env, wid).count("ActivityScheduled") == 2
    assert _types(env, wid).count("ActivityCancelRequested") == 1
    replays_cleanly(env, wid)


class AsyncioRaces(Workflow):
    name = "race.AsyncioRaces"

    async def execute(self, mode: str) -> list:
        if mode == "wait_for-timeout":
            try:
                await asyncio.wait_for(workflow.activity(slow, "w"), timeout=5)
            except asyncio.TimeoutError:  # noqa: UP041 - the name docs/API.md §10 promises
                return ["timeout"]
        if mode == "wait_for-ok":
            return [await asyncio.wait_for(workflow.activity(slow, "w"), 120)]
        if mode == "wait":
            act, timer = workflow.activity(slow, "x"), asyncio.sleep(5)
            done, pending = await asyncio.wait([act, timer], return_when=asyncio.FIRST_COMPLETED)
            return [len(done), len(pending), act in pending, act.cancelled()]
        return []


@pytest.mark.parametrize(
    ("mode", "result", "cancelled"),
    [
        ("wait_for-timeout", ["timeout"], "ActivityCancelRequested"),
        ("wait_for-ok", ["slow w"], "TimerCancelled"),
        ("wait", [1, 1, True, True], "ActivityCancelRequested"),
    ],
)
def test_asyncio_wait_and_wait_for_race_on_the_same_machinery(mode, result, cancelled):
    env = WorkflowEnvironment(activity_durations=SLOW)
    wid = env.start(AsyncioRaces, mode)
    assert env.result(wid) == result
    assert cancelled in _types(env, wid)
    replays_cleanly(env, wid)


class Busy(Workflow):
    name = "race.Busy"

    async def execute(self) -> str:
        return await workflow.activity(slow, "busy")


def test_cancelling_a_workflow_cancels_its_activity_in_flight_and_ignores_its_late_result():
    env = WorkflowEnvironment(activity_durations=SLOW)
    wid = env.start(Busy)
    scheduled = next(e for e in env.history(wid) if e["type"] == "ActivityScheduled")
    key = (wid, scheduled["run_id"], scheduled["activity_id"])
    assert key not in env.cancelled_activities
    env.cancel(wid)
    assert env.status(wid) == "cancelled"
    assert key in env.cancelled_activities
    inst = env.instances[wid]
    late = {"type": "CompleteActivity", "command_id": "late", "workflow_id": wid, "run_id": key[1],
            "activity_id": key[2], "attempt": 1, "result": b'"too late"'}
    assert inst.handle([late]).events == []
    replays_cleanly(env, wid)


def test_cancelling_a_workflow_in_the_middle_of_a_race_cancels_the_racing_activity():
    env = WorkflowEnvironment(activity_durations=SLOW)
    wid = env.start(ActivityVsTimer, 3600)
    scheduled = next(e for e in env.history(wid) if e["type"] == "ActivityScheduled")
    env.cancel(wid)
    assert (wid, scheduled["run_id"], scheduled["activity_id"]) in env.cancelled_activities
    assert env.status(wid) == "cancelled"
    assert "TimerCancelled" in _types(env, wid)  # the race's timer stops too
    replays_cleanly(env, wid)


def test_heartbeat_raises_activity_cancelled_once_the_owner_cancelled():
    info = ActivityInfo("w", "r", "T", 2, 1, "race.slow", "default")

    class _Worker:
        def send_command(self, *args: object, **kwargs: object) -> None:
            pass

        class producer:  # noqa: N801
            @staticmethod
            def flush() -> None:
                pass

    ctx = _Context(info, _Worker(), None)  # type: ignore[arg-type]
    token = _context.set(ctx)
    try:
        heartbeat("fine")
        ctx.cancelled = True
        with pytest.raises(ActivityCancelled, match="activity race.slow \\(2\\) of workflow w was cancelled"):
            heartbeat("again")
    finally:
        _context.reset(token)


def test_first_needs_something_to_race():
    class Empty(Workflow):
        name = "race.Empty"

        async def execute(self) -> None:
            await workflow.first([])

    env = WorkflowEnvironment()
    wid = env.start(Empty)
    assert env.status(wid) == "failed"
    assert "at least one" in env.history(wid)[-1]["message"]
