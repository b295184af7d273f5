"""Schedules (docs/API.md §8) on a real broker: firings, pause/resume/trigger, overlap, and a node SIGKILL during
firings (no fire time runs twice, none within the catch-up window is missed)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from actors import Client
from projections.migrate import connect
from tests.apps import schedules_app as app
from tests.processes import Processes, process_cluster, wait_until
from tests.stack import running_stack


def _runs(client: Client, schedule_id: str) -> list[str]:
    return sorted(w.id for w in client.list(limit=10_000) if w.id.startswith(f"{schedule_id}@"))


def _fire_time(run_id: str) -> datetime:
    return datetime.strptime(run_id.split("@", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_every_second_fires_pauses_resumes_triggers_and_deletes(kafka, pg_server, tmp_path):
    with running_stack(kafka, pg_server, tmp_path) as (client, _node, _ns):
        s = client.schedule("tick", app.Quick, "x", every=1)
        time.sleep(3.5)
        wait_until(lambda: len(_runs(client, "tick")) >= 3, 10, "three firings")
        runs = _runs(client, "tick")
        assert 3 <= len(runs) <= 4, runs
        times = [_fire_time(r) for r in runs]
        assert all(b - a == timedelta(seconds=1) for a, b in zip(times, times[1:], strict=False)), runs
        assert all(client.get(r).result(timeout=10) == "x" for r in runs)
        info = s.describe()
        assert len(info["next_runs"]) == 5 and info["paused"] is False
        assert {r["id"] for r in info["recent_runs"]} >= set(runs[:3])
        assert all(r["status"] == "completed" for r in info["recent_runs"] if r["id"] in runs)
        assert [i["id"] for i in client.list_schedules()] == ["tick"]

        s.pause("hold")
        time.sleep(0.5)  # a firing already under way when the pause arrived may still land
        paused_at = len(_runs(client, "tick"))
        time.sleep(2.5)
        assert len(_runs(client, "tick")) == paused_at, "a paused schedule fired"
        assert s.describe()["paused"] is True
        s.resume()
        wait_until(lambda: len(_runs(client, "tick")) >= paused_at + 2, 10, "firings after resume")

        s.update(every=3600)
        run_id = s.trigger()
        assert client.get(run_id).result(timeout=10) == "x"
        s.delete()
        wait_until(lambda: client.get("schedule:tick").status() == "completed", 10, "the schedule to end")
        count = len(_runs(client, "tick"))
        time.sleep(1.5)
        assert len(_runs(client, "tick")) == count
        assert client.list_schedules() == []


def test_overlap_skip_with_a_long_running_target(kafka, pg_server, tmp_path):
    with running_stack(kafka, pg_server, tmp_path) as (client, _node, _ns):
        client.schedule("long", app.Sleepy, 2.5, every=1)  # overlap="skip" is the default
        time.sleep(5.8)
        runs = _runs(client, "long")
        times = [_fire_time(r) for r in runs]
        assert 1 <= len(runs) <= 2, runs
        assert all(b - a >= timedelta(seconds=3) for a, b in zip(times, times[1:], strict=False)), runs
        skipped = [r for r in client.get_schedule("long").describe()["recent_runs"] if r["status"] == "skipped"]
        assert len(skipped) >= 2
        client.get_schedule("long").delete()


@pytest.mark.parametrize(("policy", "ended"), [("terminate_other", "terminated"), ("cancel_other", "cancelled")])
def test_overlap_terminate_other_and_cancel_other_end_the_open_run(kafka, pg_server, tmp_path, policy, ended):
    """Each firing ends the run still open (a 60 s sleeper) and starts its own: only the latest is open."""
    with running_stack(kafka, pg_server, tmp_path) as (client, _node, _ns):
        sid = policy.replace("_", "-")
        s = client.schedule(sid, app.Sleepy, 60, every=1, overlap=policy)
        wait_until(lambda: len(_runs(client, sid)) >= 3, 20, "three firings")
        s.pause()
        time.sleep(1.0)  # a firing already under way when the pause arrived may still land
        runs = _runs(client, sid)
        times = [_fire_time(r) for r in runs]
        assert all(b - a == timedelta(seconds=1) for a, b in zip(times, times[1:], strict=False)), f"no firing is skipped: {runs}"

        def settled() -> bool:
            return all(client.get(r).status() == ended for r in runs[:-1])

        wait_until(settled, 20, f"every run but the latest to be {ended}")
        assert client.get(runs[-1]).status() in ("running", "waiting"), "the latest run goes on"
        assert not [r for r in s.describe()["recent_runs"] if r["status"] == "skipped"]
        client.get(runs[-1]).terminate()
        s.delete()


def test_cli_schedule_create_describe_list_pause_backfill_trigger_delete(kafka, pg_server, tmp_path, capsys):
    """Every schedule action of ``metamorph schedule`` on a real node, and bad input as usage errors."""
    import json

    from actors.interfaces.cli import EXIT_USAGE, main

    with running_stack(kafka, pg_server, tmp_path) as (client, _node, namespace):
        conn = ["--kafka", kafka, "--postgres", client.postgres, "--namespace", namespace]  # before the action
        start_at = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
        for bad, message in ((["--cron", "61 * * * *"], "invalid cron expression"),
                             (["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"], "unknown time zone"),
                             (["--every", "60", "--start-at", "tomorrow"], "start_at must be an ISO 8601 time"),
                             (["--every", "60", "--overlap", "sometimes"], "unknown overlap policy")):
            assert main(["schedule", *conn, "create", "bad", "sched.Quick", *bad]) == EXIT_USAGE, bad
            assert message in capsys.readouterr().err
        assert main(["schedule", *conn, "create", "hourly", "sched.Quick", '"h"', "--every", "3600", "--start-at",
                     start_at.isoformat(), "--overlap", "allow_all", "--json"]) == 0  # fmt: skip
        info = json.loads(capsys.readouterr().out)
        assert info["next_runs"][0] == start_at.isoformat() and info["spec"]["start_at"] == start_at.isoformat()
        assert main(["schedule", *conn, "list", "--json"]) == 0
        assert [i["id"] for i in json.loads(capsys.readouterr().out)] == ["hourly"]
        assert main(["schedule", *conn, "pause", "hourly", "--note", "maintenance"]) == 0
        capsys.readouterr()
        assert main(["schedule", *conn, "describe", "hourly", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["paused"] is True
        assert main(["schedule", *conn, "resume", "hourly"]) == 0
        assert "resume" in capsys.readouterr().out
        past = datetime(2030, 1, 1, tzinfo=UTC)
        assert main(["schedule", *conn, "backfill", "hourly", past.isoformat(), (past + timedelta(hours=2)).isoformat(), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["backfilled"] == 3
        wait_until(lambda: len(_runs(client, "hourly")) >= 3, 20, "the backfilled runs")
        assert _runs(client, "hourly") == [f"hourly@2030-01-01T0{h}:00:00Z" for h in range(3)]
        assert main(["schedule", *conn, "backfill", "hourly", "2030-01-02T00:00:00Z", "2030-01-01T00:00:00Z"]) == EXIT_USAGE
        assert "start <= end" in capsys.readouterr().err
        assert main(["schedule", *conn, "trigger", "hourly"]) == 0
        run_id = capsys.readouterr().out.strip()
        assert run_id.startswith("hourly@") and client.get(run_id).result(timeout=20) == "h"
        assert main(["schedule", *conn, "delete", "hourly"]) == 0
        wait_until(lambda: client.list_schedules() == [], 20, "the schedule to be gone")


@pytest.fixture
def cluster_of_processes(kafka, namespace, pg_url, tmp_path):
    procs = Processes(tmp_path / "logs")
    with process_cluster(kafka, namespace, pg_url, procs, partitions=2) as client:
        yield procs, client, pg_url


@pytest.mark.slow
def test_node_sigkill_during_firings_neither_doubles_nor_misses(cluster_of_processes, kafka, namespace, tmp_path):
    procs, client, pg_url = cluster_of_processes
    procs.node("n1", kafka, namespace, tmp_path / "n1")
    client.schedule("crash", app.Quick, "c", every=1, overlap="allow_all", catchup_window=120)
    wait_until(lambda: len(_runs(client, "crash")) >= 3, 20, "firings before the crash")
    procs.kill("n1")  # SIGKILL while it fires every second
    time.sleep(3)  # firings missed while no node runs: started on recovery (within catchup_window)
    procs.node("n1", kafka, namespace, tmp_path / "n1")
    time.sleep(3)
    client.get_schedule("crash").pause()
    time.sleep(1.5)
    runs = _runs(client, "crash")
    times = [_fire_time(r) for r in runs]
    gaps = [(a, b) for a, b in zip(times, times[1:], strict=False) if b - a != timedelta(seconds=1)]
    assert not gaps, f"fire times missed: {gaps}"
    assert len(runs) >= 9, runs
    for run in runs:
        assert client.get(run).result(timeout=20) == "c"
    with connect(pg_url, namespace) as conn:
        rows = conn.execute(
            "SELECT workflow_id, count(*) FROM history WHERE type = 'WorkflowStarted' AND workflow_id LIKE 'crash@%%' "
            "GROUP BY 1"
        ).fetchall()
    assert len(rows) == len(runs) and all(n == 1 for _, n in rows), f"a fire time ran twice: {rows}"
