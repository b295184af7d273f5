"""Schedules (docs/API.md §8): a schedule is itself a workflow of the engine, ``metamorph.Schedule``.

There is no scheduler process. The schedule ``nightly`` is the workflow ``schedule:nightly``; like any
workflow it is owned by the node owning its id's partition, survives crashes by replay and moves on a
rebalance. Its code computes the next fire time from ``workflow.now()`` and the spec (pure: the same on
every replay), sleeps on a durable timer and then starts the target as a child workflow with the id
``f"{schedule_id}@{fire_time:%Y-%m-%dT%H:%M:%SZ}"``. The start is a recorded decision (``ChildStarted``)
whose message id derives from the event, so a crash re-sends at most the same start, and a start of an id
that exists does nothing: a firing never runs twice.

* Overlap: the latest started run is a child future, so the code knows when it closes. ``skip`` does not
  start while it is open, ``buffer_one`` keeps one fire time and starts it when the run closes,
  ``allow_all`` always starts, ``cancel_other`` cancels the open run (ChildCancelRequested) and starts,
  ``terminate_other`` terminates it (the built-in activity ``metamorph.schedule.terminate``) and starts.
* Catch-up: fire times in ``(cursor, now]`` are due when the code wakes; those older than
  ``catchup_window`` seconds (the node was down) are skipped, the others started at once.
* Control: ``upsert``/``pause``/``resume``/``trigger``/``backfill``/``delete`` are updates (the caller
  learns they were applied), ``describe`` a query.
* History stays bounded: after ``CONTINUE_AFTER`` loop turns the schedule continues-as-new with its
  state. With a policy that tracks the previous run it waits until that run is closed (a new run could
  not hear about a child of the old one), so a target that never ends postpones it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from actors import workflow
from actors.engine.definitions import Workflow, activity, query, update, workflow_type_name
from actors.errors import WorkflowNotRunning

if TYPE_CHECKING:
    from actors.client.sync import Client

TYPE = "metamorph.Schedule"
PREFIX = "schedule:"
OVERLAP = ("skip", "buffer_one", "allow_all", "cancel_other", "terminate_other")
DEFAULT_CATCHUP = 3600.0
#: Loop turns of one run before it continues-as-new (each turn is a few events).
CONTINUE_AFTER = 200
#: How many runs describe() remembers (carried over continue-as-new).
RECENT = 20
#: At most this many fire times per backfill call (a typo in a range must not start a million runs).
MAX_BACKFILL = 1000
_ID = "%Y-%m-%dT%H:%M:%SZ"


# -- the spec ------------------------------------------------------------------------------------------------
def _seconds(name: str, value: Any, *, allow_zero: bool = True) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a number of seconds or a timedelta, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'zero or more' if allow_zero else 'more than zero'} seconds, not {value!r}")
    return float(value)


def _time(name: str, value: Any) -> str | None:
    """An aware datetime (or ISO string) as an ISO UTC string; naive datetimes are refused (ambiguous)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name} must be an ISO 8601 time, not {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    return value.astimezone(UTC).isoformat()


def check_cron(expr: Any) -> str:
    """A 5-field cron expression, checked by cronsim; ValueError naming what is wrong."""
    if not isinstance(expr, str) or len(expr.split()) != 5:
        raise ValueError(f"invalid cron expression {expr!r}: expected 5 fields (minute hour day month weekday)")
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from None
    return " ".join(expr.split())


def check_timezone(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"timezone must be an IANA time zone name such as 'Europe/Paris', not {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Paris')") from None
    return name


def make_spec(
    wf: type | str, args: tuple | list, *, cron: str | None = None, every: float | timedelta | None = None,
    timezone: str = "UTC", overlap: str = "skip", catchup_window: float | timedelta = DEFAULT_CATCHUP,
    jitter: float | timedelta = 0, start_at: datetime | str | None = None, end_at: datetime | str | None = None,
) -> dict[str, Any]:
    """The schedule's spec as JSON, every field checked: bad input is a ValueError at the caller."""
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of cron= (a 5-field cron expression) or every= (seconds)")
    spec: dict[str, Any] = {"workflow_type": workflow_type_name(wf), "args": list(args), "cron": None, "every": None}
    if cron is not None:
        spec["cron"] = check_cron(cron)
    else:
        secs = _seconds("every", every, allow_zero=False)
        if secs < 1:
            raise ValueError(f"every must be at least 1 second (run ids name the second they fire), not {every!r}")
        spec["every"] = secs
    spec["timezone"] = check_timezone(timezone)
    if overlap not in OVERLAP:
        raise ValueError(f"unknown overlap policy {overlap!r}; expected one of: {', '.join(OVERLAP)}")
    spec["overlap"] = overlap
    spec["catchup_window"] = _seconds("catchup_window", catchup_window)
    spec["jitter"] = _seconds("jitter", jitter)
    spec["start_at"], spec["end_at"] = _time("start_at", start_at), _time("end_at", end_at)
    if spec["start_at"] and spec["end_at"] and spec["end_at"] < spec["start_at"]:
        raise ValueError("end_at is before start_at")
    return spec


def check_schedule_id(schedule_id: Any) -> str:
    if not isinstance(schedule_id, str) or not schedule_id or "@" in schedule_id or len(schedule_id) > 200:
        raise ValueError(f"a schedule id is a non-empty string without '@' (at most 200 characters), not {schedule_id!r}")
    return schedule_id


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def fire_times(spec: dict, after: datetime, limit: int, until: datetime | None = None) -> list[datetime]:
    """The spec's fire times strictly after ``after`` (aware UTC), at most ``limit``, none after ``until``.

    ``every`` is aligned to the Unix epoch (every=60 fires at whole minutes), so the times, and the run
    ids named after them, do not depend on when the schedule was created or continued. Cron times are
    computed in the spec's time zone by cronsim (DST gaps and repeats handled there), returned in UTC.
    """
    start = _parse(spec["start_at"]) if spec.get("start_at") else None
    end = _parse(spec["end_at"]) if spec.get("end_at") else None
    if until is not None:
        end = until if end is None else min(end, until)
    if start is not None and after < start:
        after = start - timedelta(microseconds=1)
    out: list[datetime] = []
    if spec.get("every"):
        step = int(round(spec["every"] * 1000))
        t = (int(after.timestamp() * 1000) // step + 1) * step
        while len(out) < limit:
            at = datetime.fromtimestamp(t / 1000, UTC)
            if end is not None and at > end:
                break
            out.append(at)
            t += step
        return out
    zone = ZoneInfo(spec.get("timezone") or "UTC")
    it = CronSim(spec["cron"], after.astimezone(zone))
    for local in it:
        at = local.astimezone(UTC)
        if (end is not None and at > end) or len(out) >= limit:
            break
        out.append(at)
    return out


def run_id_for(schedule_id: str, fire_time: datetime) -> str:
    return f"{schedule_id}@{fire_time.astimezone(UTC):{_ID}}"


def initial_state(schedule_id: str, spec: dict, paused: bool = False, note: str | None = None) -> dict[str, Any]:
    """The argument of a new ``metamorph.Schedule`` run; its cursor (fire times up to it are handled) is set
    by the workflow to its start time, so a new schedule does not fire its past."""
    return {"schedule_id": schedule_id, "spec": spec, "paused": bool(paused), "note": note, "cursor": None,
            "recent": [], "buffered": None, "pending": [], "deleted": False, "fired": 0, "skipped": 0}


# -- the workflow --------------------------------------------------------------------------------------------
@activity(name="metamorph.schedule.terminate", tries=5, backoff=(1, 2, 5))
def terminate_run(workflow_id: str, reason: str) -> None:
    """terminate_other: end the previous run (workflow code has no terminate; a worker sends the command)."""
    from actors.activities.worker import _context

    ctx = _context.get()
    if ctx is None:
        raise RuntimeError("terminate_run runs only as an activity")
    ctx.worker.send_command(workflow_id, "TerminateWorkflow", f"{ctx.info.workflow_id}:terminate:{workflow_id}", reason=reason)
    ctx.worker.producer.flush()


class ScheduleWorkflow(Workflow):
    """The durable loop of one schedule (see the module docstring)."""

    name = TYPE

    def __init__(self) -> None:
        self.s: dict[str, Any] = {}
        self._changed = False
        self._runs: dict[str, Any] = {}  # run id -> child future, for runs started by this run
        self._latest: str | None = None

    async def execute(self, state: dict) -> str:
        self.s = state
        if self.s["cursor"] is None:
            self.s["cursor"] = workflow.now().isoformat()
        turns = 0
        while not self.s["deleted"]:
            turns += 1
            if turns > CONTINUE_AFTER and not self.s["pending"] and (self.s["spec"]["overlap"] == "allow_all" or not self._open()):
                workflow.continue_as_new(self.s)
            now = workflow.now()
            if self.s["buffered"] and not self._open():
                buffered, self.s["buffered"] = self.s["buffered"], None
                await self._start(_parse(buffered))
                continue
            if self.s["pending"]:  # triggers and backfills, in the order asked
                at = self.s["pending"].pop(0)
                await self._fire(_parse(at))
                continue
            if self.s["paused"]:
                await self._idle(None)
                continue
            spec = self.s["spec"]
            cursor = _parse(self.s["cursor"])
            oldest = now - timedelta(seconds=spec["catchup_window"])
            due = fire_times(spec, cursor, 50, until=now)
            if due:
                for t in due:
                    if t < oldest:
                        self.s["skipped"] += 1  # missed while nothing ran, beyond the catch-up window
                        continue
                    await self._fire(t)
                self.s["cursor"] = due[-1].isoformat()
                continue
            if cursor < oldest:  # skip a long outage's fire times without listing them
                self.s["cursor"] = oldest.isoformat()
            nxt = fire_times(spec, cursor, 1)
            if not nxt:
                await self._idle(None)  # past end_at: nothing to do until updated or deleted
                continue
            delay = (nxt[0] - now).total_seconds()
            if spec["jitter"]:
                delay += workflow.random().uniform(0, spec["jitter"])
            await self._idle(delay)
        return "deleted"

    def _open(self) -> bool:
        """True while the latest run this schedule started is still open."""
        fut = self._runs.get(self._latest) if self._latest else None
        return fut is not None and not fut.done()

    def _wake(self) -> bool:
        return self._changed or bool(self.s["buffered"] and not self._open())

    async def _idle(self, delay: float | None) -> None:
        """Sleep until ``delay`` elapses or a control update (or a closed run releasing a buffered one)."""
        if not self._wake():
            if delay is None:
                await workflow.wait(self._wake)
            elif delay > 0:
                await workflow.first([workflow.wait(self._wake), workflow.timer(delay)])
        self._changed = False

    async def _fire(self, t: datetime) -> None:
        """One fire time, under the overlap policy."""
        run_id = run_id_for(self.s["schedule_id"], t)
        if run_id in self._runs or any(r["id"] == run_id for r in self.s["recent"]):
            return  # already started (a trigger in the same second, a backfill of a time that ran)
        policy = self.s["spec"]["overlap"]
        if self._open():
            if policy == "skip":
                self._remember(run_id, t, "skipped")
                self.s["skipped"] += 1
                return
            if policy == "buffer_one":
                if self.s["buffered"] is None:
                    self.s["buffered"] = t.isoformat()
                else:
                    self._remember(run_id, t, "skipped")
                    self.s["skipped"] += 1
                return
            if policy == "cancel_other" and self._latest is not None:
                self._runs[self._latest].cancel()
            elif policy == "terminate_other":
                await workflow.activity(terminate_run, self._latest, f"schedule {self.s['schedule_id']}: terminate_other")
        await self._start(t)

    async def _start(self, t: datetime) -> None:
        spec = self.s["spec"]
        run_id = run_id_for(self.s["schedule_id"], t)
        handle = await workflow.start_child(spec["workflow_type"], *spec["args"], id=run_id)
        self._runs[run_id] = handle.result()
        self._latest = run_id
        self.s["fired"] += 1
        self._remember(run_id, t, "started")

    def _remember(self, run_id: str, t: datetime, action: str) -> None:
        self.s["recent"] = [*self.s["recent"], {"id": run_id, "fire_time": t.isoformat(), "action": action}][-RECENT:]

    # -- control (updates: the caller learns they were applied) --------------------------------------------
    @update
    def upsert(self, spec: dict, paused: bool | None = None, note: str | None = None) -> dict:
        """Replace the spec (create of an existing id); fire times before now are not fired for it."""
        if spec != self.s["spec"]:
            self.s["spec"] = spec
            self.s["cursor"] = max(_parse(self.s["cursor"] or workflow.now().isoformat()), workflow.now()).isoformat()
        if paused is not None:
            self.s["paused"], self.s["note"] = bool(paused), note
        self._changed = True
        return self.describe()

    @update
    def pause(self, note: str | None = None) -> bool:
        self.s["paused"], self.s["note"] = True, note
        self._changed = True
        return True

    @update
    def resume(self) -> bool:
        """Carry on from now: fire times that passed while paused are not fired (backfill them if wanted)."""
        self.s["paused"], self.s["note"] = False, None
        self.s["cursor"] = max(_parse(self.s["cursor"]), workflow.now()).isoformat()
        self._changed = True
        return True

    @update
    def trigger(self) -> str:
        """Fire now (the run id names this second), honouring the overlap policy."""
        now = workflow.now().replace(microsecond=0)
        self.s["pending"].append(now.isoformat())
        self._changed = True
        return run_id_for(self.s["schedule_id"], now)

    @update
    def backfill(self, start: str, end: str) -> int:
        """Fire every spec time in ``[start, end]`` (at most MAX_BACKFILL), honouring the overlap policy."""
        times = fire_times(self.s["spec"] | {"start_at": None, "end_at": None},
                           _parse(start) - timedelta(microseconds=1), MAX_BACKFILL, until=_parse(end))
        self.s["pending"].extend(t.isoformat() for t in times)
        self._changed = True
        return len(times)

    @update
    def delete(self) -> bool:
        """End the schedule (runs it started go on)."""
        self.s["deleted"] = True
        self._changed = True
        return True

    @query
    def describe(self) -> dict:
        spec = self.s["spec"]
        after = max(_parse(self.s["cursor"]), workflow.now()) if self.s.get("cursor") else workflow.now()
        recent = []
        for r in self.s["recent"]:
            status = r["action"]
            fut = self._runs.get(r["id"])
            if fut is not None:
                exc = fut.exception() if fut.done() else None
                status = "running" if not fut.done() else "completed" if exc is None else "closed"
            recent.append({**r, "status": status})
        return {
            "id": self.s["schedule_id"], "spec": spec, "paused": self.s["paused"], "note": self.s["note"],
            "deleted": self.s["deleted"], "buffered": self.s["buffered"], "fired": self.s["fired"], "skipped": self.s["skipped"],
            "next_runs": [] if self.s["deleted"] else [t.isoformat() for t in fire_times(spec, after, 5)],
            "recent_runs": recent,
        }


# -- the client side -----------------------------------------------------------------------------------------
def workflow_id_of(schedule_id: str) -> str:
    return PREFIX + schedule_id


class ScheduleHandle:
    """A schedule by id: every call is an update or query of its workflow ``schedule:{id}``."""

    def __init__(self, client: Client, schedule_id: str) -> None:
        self._client = client
        self.id = schedule_id
        self.workflow_id = workflow_id_of(schedule_id)

    def __repr__(self) -> str:
        return f"ScheduleHandle({self.id!r})"

    def _call(self, kind: str, name: str, *args: Any, timeout: float = 10) -> Any:
        """A query/update of the schedule's workflow, retried over the moment a continue-as-new is in flight."""
        deadline = time.monotonic() + timeout
        handle = self._client.get(self.workflow_id)
        while True:
            try:
                return getattr(handle, kind)(name, *args, timeout=max(1.0, deadline - time.monotonic()))
            except WorkflowNotRunning as exc:
                if exc.status != "continued" or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def describe(self) -> dict:
        """Spec, paused, ``next_runs`` (next 5 times), ``recent_runs`` (id, fire time, status).

        With PostgreSQL configured a started run's status is the projection's (completed, failed, ...).
        """
        info = self._call("query", "describe")
        if self._client.postgres:
            for run in info["recent_runs"]:
                if run["action"] == "started":
                    row = self._client._read("get_workflow", run["id"])
                    if row is not None:
                        run["status"] = row["status"]
        return info

    def pause(self, note: str | None = None) -> None:
        self._call("update", "pause", note)

    def resume(self) -> None:
        self._call("update", "resume")

    def trigger(self) -> str:
        """Fire now; returns the run id (``{id}@{now}``)."""
        return self._call("update", "trigger")

    def backfill(self, start: datetime | str, end: datetime | str) -> int:
        """Fire every time of the spec in ``[start, end]``; returns how many fire times that is."""
        s, e = _time("start", start), _time("end", end)
        if s is None or e is None or e < s:
            raise ValueError("backfill needs start <= end")
        return self._call("update", "backfill", s, e)

    def update(self, **changes: Any) -> dict:
        """Change parts of the spec (``cron``/``every`` replace each other; ``workflow``/``args`` the target)."""
        return self._call("update", "upsert", updated_spec(self.describe()["spec"], changes))

    def delete(self) -> None:
        self._call("update", "delete")


def updated_spec(current: dict, changes: dict[str, Any]) -> dict:
    """The spec ``ScheduleHandle.update(**changes)`` upserts: ``current`` with ``changes`` over it (``cron``
    and ``every`` replace each other; ``workflow``/``args`` the target), validated (ValueError)."""
    allowed = {"workflow", "args", "cron", "every", "timezone", "overlap", "catchup_window", "jitter", "start_at", "end_at"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"unknown schedule field(s): {', '.join(sorted(unknown))}")
    merged = {k: current[k] for k in ("cron", "every", "timezone", "overlap", "catchup_window", "jitter", "start_at", "end_at")}
    if "cron" in changes and changes["cron"] is not None:
        merged["every"] = None
    if "every" in changes and changes["every"] is not None:
        merged["cron"] = None
    merged.update({k: v for k, v in changes.items() if k not in ("workflow", "args")})
    return make_spec(changes.get("workflow", current["workflow_type"]), changes.get("args", current["args"]), **merged)


def create(client: Client, schedule_id: str, wf: type | str, args: tuple, *, paused: bool = False, **spec_options: Any) -> ScheduleHandle:
    """``client.schedule(...)``: validate everything here, then one update-with-start of ``schedule:{id}``
    (a new schedule starts; an existing one gets the new spec)."""
    check_schedule_id(schedule_id)
    spec = make_spec(wf, args, **spec_options)
    client.update_with_start(
        TYPE, initial_state(schedule_id, spec, paused), id=workflow_id_of(schedule_id), update="upsert",
        update_args=[spec, paused], if_closed="allow",
    )
    return ScheduleHandle(client, schedule_id)


def list_all(client: Client) -> list[dict]:
    """Every schedule that is not deleted, described (reads the projections, then asks each schedule)."""
    out = []
    for summary in client.list(type=TYPE, limit=10_000):
        if summary.status in ("completed", "failed", "cancelled", "terminated", "timed_out"):
            continue
        schedule_id = summary.id.removeprefix(PREFIX)
        try:
            info = ScheduleHandle(client, schedule_id)._call("query", "describe")
        except Exception as exc:  # one unreachable schedule must not hide the others
            info = {"id": schedule_id, "error": f"{type(exc).__name__}: {exc}"}
        out.append(info)
    return sorted(out, key=lambda i: i["id"])

