"""Unit tests of the replay engine and the authoring API: no broker, no database, virtual time.

Each scenario runs through ``WorkflowEnvironment`` (the same ``WorkflowInstance`` code a node runs) and,
where it matters, is replayed from its history to prove the rebuilt run makes exactly the same decisions.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from actors import (
    ActivityFailed,
    ActivityOptions,
    ChildWorkflowFailed,
    NonRetryableError,
    Workflow,
    WorkflowCancelled,
    WorkflowError,
    WorkflowFailed,
    WorkflowTerminated,
    activity,
    activity_info,
    query,
    signal,
    update,
    workflow,
)
from actors.engine.definitions import activity_name
from actors.engine.instance import WorkflowInstance
from actors.testing import WorkflowEnvironment

CALLS: dict[str, int] = {}


def _count(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


@activity(name="t.greet")
def greet(name: str) -> str:
    return f"hello {name}"


@activity(name="t.agreet")
async def agreet(name: str) -> str:
    await asyncio.sleep(0)
    return f"hi {name}"


@activity(name="t.flaky", tries=5, backoff=(1, 2))
def flaky(key: str, fail_times: int) -> str:
    n = _count(key)
    if n <= fail_times:
        raise ConnectionError(f"attempt {n} failed")
    return f"ok after {n}"


@activity(name="t.broken", tries=3, backoff=(1,))
def broken() -> None:
    raise ValueError("always broken")


@activity(name="t.fatal", tries=10, non_retryable=(KeyError,))
def fatal(kind: str) -> None:
    if kind == "nonretryable":
        raise NonRetryableError("card stolen")
    raise KeyError("no such account")


@activity(name="t.info")
def info_activity() -> dict:
    info = activity_info()
    return {"attempt": info.attempt, "name": info.name, "workflow_id": info.workflow_id}


@activity(name="t.record")
def record(log_key: str, item: str) -> str:
    CALLS.setdefault(log_key, [])  # type: ignore[arg-type]
    CALLS[log_key].append(item)  # type: ignore[attr-defined]
    return item


class Sequence(Workflow):
    name = "t.Sequence"

    async def execute(self, who: str) -> list[str]:
        a = await workflow.activity(greet, who)
        b = await workflow.activity("t.agreet", who)
        c, d = await workflow.all([workflow.activity(greet, "x"), workflow.activity(greet, "y")])
        e, f = await asyncio.gather(workflow.activity(greet, "g1"), workflow.activity(greet, "g2"))
        return [a, b, c, d, e, f]


class Approval(Workflow):
    name = "t.Approval"

    def __init__(self) -> None:
        self.approved_by: str | None = None
        self.stage = "new"

    async def execute(self, timeout: float | None) -> str:
        self.stage = "waiting"
        ok = await workflow.wait(lambda: self.approved_by is not None, timeout=timeout)
        self.stage = "done"
        return f"approved by {self.approved_by}" if ok else "timed out"

    @signal
    def approve(self, by: str) -> None:
        self.approved_by = by

    @query
    def current_stage(self) -> str:
        return self.stage


class Sleeper(Workflow):
    name = "t.Sleeper"

    def __init__(self) -> None:
        self.woke = False

    async def execute(self, seconds: float) -> str:
        start = workflow.now()
        await workflow.timer(timedelta(seconds=seconds))
        await asyncio.sleep(seconds)
        self.woke = True
        return f"{(workflow.now() - start).total_seconds():.0f}"

    @query
    def is_awake(self) -> bool:
        return self.woke


class Retrying(Workflow):
    name = "t.Retrying"

    async def execute(self, key: str, fail_times: int) -> str:
        try:
            return await workflow.activity(flaky, key, fail_times)
        except ActivityFailed as exc:
            return f"gave up after {exc.attempts}: {exc.error_type}"


class Fatal(Workflow):
    name = "t.Fatal"

    async def execute(self, kind: str) -> None:
        await workflow.activity(fatal, kind)


class Child(Workflow):
    name = "t.Child"

    def __init__(self) -> None:
        self.go = False

    async def execute(self, n: int, wait_signal: bool = False) -> int:
        if n < 0:
            raise ValueError("negative")
        if wait_signal:
            await workflow.wait(lambda: self.go)
        results = await workflow.all([workflow.activity(greet, f"{n}/{i}") for i in range(10)])
        return n * 10 + len(results)

    @signal
    def proceed(self) -> None:
        self.go = True


class Parent(Workflow):
    name = "t.Parent"

    async def execute(self, count: int) -> int:
        totals = await workflow.all([workflow.child(Child, i) for i in range(count)])
        return sum(totals)


class ParentSignals(Workflow):
    name = "t.ParentSignals"

    async def execute(self) -> list:
        handle = await workflow.start_child(Child, 7, True, id="the-child")
        await handle.signal("proceed")
        try:
            await workflow.child(Child, -1)
        except ChildWorkflowFailed as exc:
            failed = exc.error_type
        return [handle.id, await handle.result(), failed]


class Counter(Workflow):
    name = "t.Counter"

    async def execute(self, n: int, total: int) -> int:
        total += await workflow.activity(greet, str(n)) and n
        if n > 1:
            workflow.continue_as_new(n - 1, total)
        return total


class ParentOfContinuing(Workflow):
    name = "t.ParentOfContinuing"

    async def execute(self) -> int:
        return await workflow.child(Counter, 4, 0)


class Saga(Workflow):
    name = "t.Saga"

    async def execute(self, key: str, parallel: bool, keep_going: bool) -> str:
        self.parallel_compensation = parallel
        self.continue_with_error = keep_going
        try:
            for step in ("a", "b", "c"):
                await workflow.activity(record, key, f"do-{step}")
                if step == "b" and keep_going:
                    self.add_compensation(lambda: workflow.activity(broken))
                self.add_compensation(lambda s=step: workflow.activity(record, key, f"undo-{s}"))
            await workflow.activity(broken)
        except ActivityFailed:
            await self.compensate()
            return "compensated"
        return "done"


class SideEffects(Workflow):
    name = "t.SideEffects"

    async def execute(self) -> list:
        value = await workflow.side_effect(lambda: _count("side-effect"))
        await workflow.timer(5)
        return [value, str(workflow.uuid4()), workflow.random().randint(0, 10**9), workflow.now().isoformat()]


class Versioned(Workflow):
    name = "t.Versioned"

    def __init__(self) -> None:
        self.version: int | None = None

    async def execute(self) -> str:
        await workflow.timer(1)
        self.version = workflow.get_version("new-greeting", workflow.DEFAULT_VERSION, 2)
        return await workflow.activity(greet, f"v{self.version}")

    @query
    def seen_version(self) -> int | None:
        return self.version


class Updatable(Workflow):
    name = "t.Updatable"

    def __init__(self) -> None:
        self.items: list[str] = []
        self.closed = False

    async def execute(self) -> list[str]:
        await workflow.wait(lambda: self.closed)
        return self.items

    @update
    def add(self, item: str) -> int:
        self.items.append(item)
        return len(self.items)

    @update
    async def add_greeting(self, who: str) -> str:
        text = await workflow.activity(greet, who)
        self.items.append(text)
        return text

    @signal
    def close(self) -> None:
        self.closed = True


class Cancellable(Workflow):
    name = "t.Cancellable"

    async def execute(self, key: str) -> str:
        try:
            await workflow.timer(3600)
            return "not cancelled"
        except asyncio.CancelledError:
            await workflow.activity(record, key, "cleanup")
            raise


class StateMachine(Workflow):
    name = "t.StateMachine"

    def __init__(self) -> None:
        self.state = "submitted"
        self.transitions: list[str] = []

    async def execute(self) -> list[str]:
        while self.state not in ("approved", "denied"):
            await workflow.wait(lambda s=self.state: self.state != s)
            self.transitions.append(self.state)
        return self.transitions

    @signal
    def move(self, to: str) -> None:
        allowed = {"submitted": ("reviewing",), "reviewing": ("approved", "denied", "submitted")}
        if to in allowed.get(self.state, ()):
            self.state = to

    @query
    def current(self) -> str:
        return self.state


class InfoWorkflow(Workflow):
    name = "t.Info"

    async def execute(self) -> dict:
        info = workflow.info()
        details = await workflow.activity(info_activity, options=ActivityOptions(tries=2))
        return {"id": info.id, "type": info.type, "activity": details}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def replays_cleanly(env: WorkflowEnvironment, wid: str) -> None:
    """A run rebuilt from its history makes no new decision and ends in the same status."""
    fresh = WorkflowInstance(wid)
    new = fresh.load(env.history(wid))
    assert new == []
    assert fresh.status == env.status(wid)


def test_activities_in_sequence_and_parallel():
    env = WorkflowEnvironment()
    wid = env.start(Sequence, "ada")
    assert env.result(wid) == ["hello ada", "hi ada", "hello x", "hello y", "hello g1", "hello g2"]
    replays_cleanly(env, wid)


def test_signal_before_the_wait_is_not_lost():
    env = WorkflowEnvironment()
    wid = env.start(Approval, None)
    env.signal(wid, "approve", "alice")
    assert env.result(wid) == "approved by alice"
    replays_cleanly(env, wid)


def test_signal_after_the_wait_and_query_sees_state():
    env = WorkflowEnvironment()
    wid = env.start(Approval, 60)
    assert env.query(wid, "current_stage") == "waiting"
    assert env.status(wid) == "waiting"
    env.sleep(30)
    env.signal(wid, "approve", "bob")
    assert env.result(wid) == "approved by bob"
    assert env.query(wid, "current_stage") == "done"


def test_wait_with_timeout_returns_false_when_time_runs_out():
    env = WorkflowEnvironment()
    wid = env.start(Approval, 10)
    assert env.result(wid) == "timed out"
    replays_cleanly(env, wid)


def test_durable_timers_and_queries_while_sleeping():
    env = WorkflowEnvironment()
    wid = env.start(Sleeper, 3600)
    assert env.query(wid, "is_awake") is False
    assert env.result(wid) == "7200"
    assert env.query(wid, "is_awake") is True
    replays_cleanly(env, wid)


def test_retries_until_success_with_backoff():
    env = WorkflowEnvironment()
    wid = env.start(Retrying, "k1", 3)
    assert env.result(wid) == "ok after 4"
    failed_attempts = [e for e in env.history(wid) if e["type"] == "ActivityAttemptFailed"]
    assert [e["attempt"] for e in failed_attempts] == [1, 2, 3]
    gaps = [(e["retry_at"] - int(e["at"].timestamp() * 1000)) / 1000 for e in failed_attempts]
    assert gaps == [1.0, 2.0, 2.0]  # backoff (1, 2): the last value repeats
    replays_cleanly(env, wid)


def test_retries_until_exhaustion_raise_activity_failed():
    env = WorkflowEnvironment()
    wid = env.start(Retrying, "k2", 100)
    assert env.result(wid) == "gave up after 5: ConnectionError"


def test_non_retryable_errors_fail_at_once():
    env = WorkflowEnvironment()
    for kind in ("nonretryable", "keyerror"):
        wid = env.start(Fatal, kind)
        with pytest.raises(WorkflowFailed) as failed:
            env.result(wid)
        assert failed.value.error_type == "ActivityFailed"
        assert sum(1 for name, *_ in env.activity_calls if name == "t.fatal") == (1 if kind == "nonretryable" else 2)


def test_children_fan_out_100_by_10_activities():
    env = WorkflowEnvironment()
    wid = env.start(Parent, 100)
    assert env.result(wid) == sum(n * 10 + 10 for n in range(100))
    assert len(env.activity_calls) == 1000
    replays_cleanly(env, wid)


def test_child_handles_signals_and_child_failure():
    env = WorkflowEnvironment()
    wid = env.start(ParentSignals)
    assert env.result(wid) == ["the-child", 80, "ValueError"]
    assert env.status("the-child") == "completed"


def test_continue_as_new_runs_fresh_histories_and_a_continuing_child():
    env = WorkflowEnvironment()
    wid = env.start(Counter, 3, 0)
    assert env.result(wid) == 6
    assert env.history(wid)[0]["continued_from"] is not None
    assert len(env.history(wid)) < 6  # the newest run only
    parent = env.start(ParentOfContinuing)
    assert env.result(parent) == 10


@pytest.mark.parametrize(
    ("parallel", "keep_going", "undo"),
    [(False, False, ["undo-c", "undo-b", "undo-a"]), (True, False, ["undo-a", "undo-b", "undo-c"]), (False, True, ["undo-c", "undo-b", "undo-a"])],
)
def test_saga_compensations(parallel, keep_going, undo):
    env = WorkflowEnvironment()
    wid = env.start(Saga, "saga", parallel, keep_going)
    assert env.result(wid) == "compensated"
    done = CALLS["saga"]
    assert done[:3] == ["do-a", "do-b", "do-c"]
    assert (sorted(done[3:]) if parallel else done[3:]) == sorted(undo) if parallel else undo


def test_saga_stops_at_a_failing_compensation_without_continue_with_error():
    class Strict(Saga):
        name = "t.StrictSaga"

        async def execute(self, key: str) -> str:
            self.add_compensation(lambda: workflow.activity(record, key, "undo-first"))
            self.add_compensation(lambda: workflow.activity(broken))
            await self.compensate()
            return "unreachable"

    env = WorkflowEnvironment()
    wid = env.start(Strict, "strict")
    with pytest.raises(WorkflowFailed):
        env.result(wid)
    assert "strict" not in CALLS  # the undo before the failing one never ran


def test_side_effects_and_deterministic_helpers_survive_replay():
    env = WorkflowEnvironment()
    wid = env.start(SideEffects)
    first = env.result(wid)
    assert first[0] == 1 and CALLS["side-effect"] == 1
    fresh = WorkflowInstance(wid)
    history = [e for e in env.history(wid) if e["type"] != "WorkflowCompleted"]
    fresh.load(history)
    timer_id = history[-1]["timer_id"] if history[-1]["type"] == "TimerStarted" else history[-1]["seq"]
    fire = {"type": "FireTimer", "command_id": "again", "run_id": fresh.run_id, "timer_id": timer_id, "kind": "timer", "attempt": 0}
    fresh.handle([fire], now=history[-1]["at"] + timedelta(seconds=5))
    assert CALLS["side-effect"] == 1  # not called again on replay


def test_versioning_new_runs_record_max_and_old_histories_get_default():
    env = WorkflowEnvironment()
    wid = env.start(Versioned)
    assert env.result(wid) == "hello v2"
    marker = [e for e in env.history(wid) if e["type"] == "VersionMarker"]
    assert marker and marker[0]["version"] == 2
    replays_cleanly(env, wid)
    # A history recorded by code from before get_version existed (no marker, the activity already
    # scheduled) replays as DEFAULT_VERSION and keeps matching.
    old = [e for e in env.history(wid) if e["type"] not in ("VersionMarker", "ActivityCompleted", "WorkflowCompleted")]
    fresh = WorkflowInstance(wid)
    assert fresh.load(old) == []
    assert fresh.status == "running"
    out = fresh.handle([{"type": "QueryWorkflow", "command_id": "q", "request_id": "q", "name": "seen_version", "input": b"[]"}])
    assert out.replies[0].result == b"-1"


def test_version_out_of_range_fails_the_workflow_naming_the_change():
    class Old(Workflow):
        name = "t.Schema"

        async def execute(self) -> int:
            v = workflow.get_version("schema", workflow.DEFAULT_VERSION, 1)
            await workflow.timer(60)
            return v

    env = WorkflowEnvironment()
    wid = env.start(Old)
    recorded = env.history(wid)  # version 1 recorded, waiting on the timer

    class New(Workflow):  # a deploy that dropped support for version 1
        name = "t.Schema"

        async def execute(self) -> int:
            v = workflow.get_version("schema", 3, 4)
            await workflow.timer(60)
            return v

    inst = WorkflowInstance(wid)
    new = inst.load(recorded)
    assert inst.status == "failed"
    assert new[-1]["type"] == "WorkflowFailed" and new[-1]["error_type"] == "VersionNotSupported"
    assert "'schema'" in new[-1]["message"] and "version 1" in new[-1]["message"]
    del Old, New


def test_nondeterminism_blocks_then_fixed_code_resumes():
    class V1(Workflow):
        name = "t.Evolving"

        async def execute(self) -> str:
            await workflow.timer(10)
            return await workflow.activity(greet, "v1")

    env = WorkflowEnvironment()
    wid = env.start(V1)
    history = env.history(wid)  # waiting on the timer

    class Broken(Workflow):  # a deploy that changed the order of commands
        name = "t.Evolving"

        async def execute(self) -> str:
            await workflow.activity(greet, "first")
            return "x"

    inst = WorkflowInstance(wid)
    new = inst.load(history)
    assert inst.status == "blocked"
    assert new[-1]["type"] == "WorkflowBlocked" and "NondeterminismError" == new[-1]["error_type"]
    assert "TimerStarted" in new[-1]["message"] and "ActivityScheduled" in new[-1]["message"]
    blocked_history = history + new

    class Fixed(Workflow):
        name = "t.Evolving"

        async def execute(self) -> str:
            await workflow.timer(10)
            return await workflow.activity(greet, "fixed")

    inst = WorkflowInstance(wid)
    new = inst.load(blocked_history)
    assert inst.status == "waiting"
    assert [e["type"] for e in new] == ["WorkflowUnblocked"]
    del V1, Broken, Fixed


def test_updates_return_values_and_change_state():
    env = WorkflowEnvironment()
    wid = env.start(Updatable)
    assert env.update(wid, "add", "one") == 1
    assert env.update(wid, "add_greeting", "bo") == "hello bo"
    with pytest.raises(Exception, match="no update named"):
        env.update(wid, "nope")
    with pytest.raises(Exception, match="TypeError|argument"):
        env.update(wid, "add")
    env.signal(wid, "close")
    assert env.result(wid) == ["one", "hello bo"]
    replays_cleanly(env, wid)


def test_cancel_raises_cancelled_error_at_the_await_and_cleanup_runs():
    env = WorkflowEnvironment()
    wid = env.start(Cancellable, "cancel")
    env.cancel(wid)
    with pytest.raises(WorkflowCancelled):
        env.result(wid)
    assert CALLS["cancel"] == ["cleanup"]
    replays_cleanly(env, wid)


def test_terminate_ends_at_once_without_running_code():
    env = WorkflowEnvironment()
    wid = env.start(Cancellable, "term")
    env.terminate(wid, "operator said so")
    with pytest.raises(WorkflowTerminated):
        env.result(wid)
    assert "term" not in CALLS


def test_state_machine_and_multi_stage_approval():
    env = WorkflowEnvironment()
    wid = env.start(StateMachine)
    env.signal(wid, "move", "approved")  # not allowed from submitted: ignored
    assert env.query(wid, "current") == "submitted"
    for to in ("reviewing", "submitted", "reviewing", "approved"):
        env.signal(wid, "move", to)
    assert env.result(wid) == ["reviewing", "submitted", "reviewing", "approved"]
    replays_cleanly(env, wid)


def test_activity_info_and_workflow_info():
    env = WorkflowEnvironment()
    wid = env.start(InfoWorkflow, id="info-1")
    assert env.result(wid) == {"id": "info-1", "type": "t.Info", "activity": {"attempt": 1, "name": "t.info", "workflow_id": "info-1"}}


def test_unknown_type_blocks_and_wrong_arguments_and_unknown_activity_fail_clearly():
    env = WorkflowEnvironment()
    wid = env.start("t.DoesNotExist")
    # docs/API.md §14 (was: failed with UnknownWorkflowType): blocked, with the reason recorded, not terminal.
    assert env.status(wid) == "blocked"
    blocked = env.history(wid)[-1]
    assert blocked["type"] == "WorkflowBlocked" and blocked["error_type"] == "UnknownWorkflowType"
    assert "t.DoesNotExist" in blocked["message"]
    wid = env.start(Approval, 1, 2, 3)
    with pytest.raises(WorkflowFailed) as failed:
        env.result(wid)
    assert failed.value.error_type == "TypeError"

    class CallsUnknown(Workflow):
        name = "t.CallsUnknown"

        async def execute(self) -> None:
            await workflow.activity("no.such.activity")

    wid = env.start(CallsUnknown)
    with pytest.raises(WorkflowFailed) as failed:
        env.result(wid)
    assert "no.such.activity" in failed.value.message


def test_duplicate_start_runs_nothing_twice():
    env = WorkflowEnvironment()
    wid = env.start(Sequence, "a", id="dup")
    env.start(Sequence, "b", id="dup")
    assert env.result(wid)[0] == "hello a"
    assert sum(1 for e in env.history(wid) if e["type"] == "WorkflowStarted") == 1


def test_retry_resets_a_failed_workflow_to_its_last_good_step():
    @activity(name="t.sometimes", tries=2, backoff=(1,))
    def sometimes(key: str) -> str:
        if CALLS.get("healthy") is None:
            raise RuntimeError("down")
        return "up"

    class Resettable(Workflow):
        name = "t.Resettable"

        async def execute(self) -> list:
            first = await workflow.activity(greet, "one")
            second = await workflow.activity(sometimes, "k")
            return [first, second]

    env = WorkflowEnvironment()
    wid = env.start(Resettable)
    with pytest.raises(WorkflowFailed):
        env.result(wid)
    CALLS["healthy"] = 1
    env.retry(wid)
    assert env.result(wid) == ["hello one", "up"]
    assert sum(1 for name, *_ in env.activity_calls if name == "t.greet") == 1  # the good step was not redone


def test_awaiting_a_foreign_awaitable_fails_with_a_clear_message():
    class Foreign(Workflow):
        name = "t.Foreign"

        async def execute(self) -> None:
            loop = asyncio.new_event_loop()
            try:
                await loop.create_future()
            finally:
                loop.close()

    env = WorkflowEnvironment()
    wid = env.start(Foreign)
    with pytest.raises(WorkflowFailed) as failed:
        env.result(wid)
    assert "only workflow." in failed.value.message


def test_queries_answer_from_the_final_state_after_the_run_ended_and_was_rebuilt():
    env = WorkflowEnvironment()
    wid = env.start(Sleeper, 1)
    assert env.result(wid) == "2"
    rebuilt = WorkflowInstance(wid)
    assert rebuilt.load(env.history(wid)) == []
    out = rebuilt.handle([{"type": "QueryWorkflow", "command_id": "q", "request_id": "q", "name": "is_awake", "input": b"[]"}])
    assert out.events == [] and out.replies[0].ok and out.replies[0].result == b"true"
    out = rebuilt.handle([{"type": "SignalWorkflow", "command_id": "s", "name": "anything", "input": b"[]"}])
    assert out.events == [] and "is completed" in out.rejected[0][1]


class LongChild(Workflow):
    name = "t.LongChild"

    async def execute(self, key: str) -> str:
        try:
            await workflow.timer(3600)
            return "finished"
        except asyncio.CancelledError:
            await workflow.activity(record, key, "child cleanup")
            raise


class ParentOfLongChildren(Workflow):
    name = "t.ParentOfLongChildren"

    async def execute(self, key: str) -> list:
        handles = [await workflow.start_child(LongChild, key, id=f"{key}-child-{i}") for i in range(2)]
        return await workflow.all([h.result() for h in handles])


@pytest.mark.parametrize(("close", "child_status"), [("cancel", "cancelled"), ("terminate", "terminated")])
def test_closing_a_parent_closes_its_open_children(close, child_status):
    env = WorkflowEnvironment()
    wid = env.start(ParentOfLongChildren, close)
    assert env.status(f"{close}-child-0") == "waiting"
    getattr(env, close)(wid)
    assert env.status(wid) == child_status
    assert [env.status(f"{close}-child-{i}") for i in range(2)] == [child_status] * 2
    assert CALLS.get(close, []) == (["child cleanup"] * 2 if close == "cancel" else [])


# -- docs/API.md §14: semantics tightened ---------------------------------------------------------------------
class CancellableSaga(Workflow):
    """The saga of docs/API.md §14: one except clause compensates both a failed step and a cancel."""

    name = "t.CancellableSaga"

    async def execute(self, key: str) -> str:
        try:
            await workflow.activity(record, key, "do-a")
            self.add_compensation(lambda: workflow.activity(record, key, "undo-a"))
            await workflow.activity(record, key, "do-b")
            self.add_compensation(lambda: workflow.activity(record, key, "undo-b"))
            await workflow.timer(3600)
            return "done"
        except (ActivityFailed, WorkflowCancelled):
            await self.compensate()
            raise


def test_workflow_cancelled_is_a_cancelled_error_and_a_workflow_error():
    assert issubclass(WorkflowCancelled, asyncio.CancelledError)
    assert issubclass(WorkflowCancelled, WorkflowError)
    error = WorkflowCancelled("w-1", "operator")
    assert isinstance(error, asyncio.CancelledError) and error.workflow_id == "w-1"
    assert "operator" in str(error)


def test_cancel_raises_workflow_cancelled_at_the_await_so_a_saga_compensates():
    env = WorkflowEnvironment()
    wid = env.start(CancellableSaga, "cancel-saga")
    assert env.status(wid) == "waiting"
    env.cancel(wid)
    with pytest.raises(WorkflowCancelled):
        env.result(wid)
    assert env.status(wid) == "cancelled"
    assert CALLS["cancel-saga"] == ["do-a", "do-b", "undo-b", "undo-a"]
    replays_cleanly(env, wid)


def test_the_tutorial_order_is_refunded_and_released_when_cancelled():
    from examples import orders

    env = WorkflowEnvironment()
    wid = env.start(orders.OrderWorkflow, "A-9", 250)
    env.sleep(1)  # charged (after one retry), stock reserved, now awaiting approval
    assert env.query(wid, "current_stage") == "awaiting approval"
    env.cancel(wid)
    assert env.status(wid) == "cancelled"
    done = [name for name, _attempt, _args in env.activity_calls]
    assert done[-2:] == [activity_name(orders.release_stock), activity_name(orders.refund_card)]


def test_a_start_of_an_unknown_type_is_blocked_until_the_code_is_deployed_then_runs():
    env = WorkflowEnvironment()
    wid = env.start("t.LateArrival", "late")
    assert env.status(wid) == "blocked"
    assert [e["type"] for e in env.history(wid)] == ["WorkflowStarted", "WorkflowBlocked"]
    env.reload(wid)  # a node of the old code takes the partition again: still blocked, nothing recorded
    assert env.status(wid) == "blocked" and len(env.history(wid)) == 2

    class LateArrival(Workflow):  # the rolling deploy reaches this node
        name = "t.LateArrival"

        async def execute(self, who: str) -> str:
            await workflow.timer(5)
            return await workflow.activity(greet, who)

    try:
        env.reload(wid)
        assert env.result(wid) == "hello late"
        kinds = [e["type"] for e in env.history(wid)]
        assert kinds[:4] == ["WorkflowStarted", "WorkflowBlocked", "TimerStarted", "WorkflowUnblocked"]
        seqs = [e["seq"] for e in env.history(wid)]
        assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))
        replays_cleanly(env, wid)
    finally:
        del LateArrival


def test_terminate_ends_a_workflow_blocked_on_an_unknown_type():
    env = WorkflowEnvironment()
    wid = env.start("t.NeverDeployed")
    assert env.status(wid) == "blocked"
    env.terminate(wid, "type retired")
    with pytest.raises(WorkflowTerminated):
        env.result(wid)


def test_an_unknown_signal_is_recorded_as_command_rejected_and_logged_as_a_warning(caplog):
    env = WorkflowEnvironment()
    wid = env.start(Approval, 100)
    with caplog.at_level("DEBUG", logger="actors"):
        env.signal(wid, "no_such_signal", 1)
    rejected = env.history(wid)[-1]
    assert rejected["type"] == "CommandRejected" and rejected["command"] == "SignalWorkflow"
    assert rejected["error_type"] == "UnknownSignal" and "no_such_signal" in rejected["message"]
    records = [r for r in caplog.records if "no_such_signal" in r.getMessage()]
    assert records and all(r.levelname == "WARNING" and r.exc_info is None for r in records)
    assert env.status(wid) == "waiting"  # the workflow carries on
