"""Start options (docs/API.md §6) end to end: real Kafka, a node, the projector, PostgreSQL, the CLI and HTTP API.

The node owning the id's partition decides, and a client that asked for a non-default policy learns the
decision on ``<ns>.replies``; these tests check that concurrent starts have exactly one winner, that a
replaced or re-run id is followed to its new run, and that delays and timeouts are durable timers.
"""

from __future__ import annotations

import threading
import time

import pytest

from actors import WorkflowAlreadyStarted, WorkflowTerminated, WorkflowTimedOut
from actors.interfaces.cli import EXIT_REFUSED, EXIT_USAGE, EXIT_WORKFLOW, main
from tests.apps.policies_app import Gate, Quick, Relay, Sleeper
from tests.processes import wait_until
from tests.stack import running_stack


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), prefix="so", partitions=2) as (
        client, node, namespace,
    ):
        yield client, namespace


def test_concurrent_starts_with_if_running_fail_have_exactly_one_winner(stack):
    client, _ = stack
    outcomes: list[object] = []
    barrier = threading.Barrier(10)

    def start() -> None:
        barrier.wait()
        try:
            outcomes.append(client.start(Gate, "race", id="race-1", if_running="fail"))
        except Exception as exc:  # noqa: BLE001 - every outcome is asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, WorkflowAlreadyStarted)]
    assert len(outcomes) == 10 and len(winners) == 1 and len(losers) == 9, outcomes
    assert {e.run_id for e in losers} == {winners[0].run_id}  # every loser names the winner's run
    client.get("race-1").terminate("done")


def test_if_running_terminate_replaces_the_run_and_the_handle_follows_it(stack):
    client, _ = stack
    old = client.start(Gate, "old", id="repl-1")
    wait_until(lambda: old.status() == "waiting", 20, "first run waiting")
    new = client.start(Gate, "new", id="repl-1", if_running="terminate")
    assert new.run_id and new.status() in ("pending", "running", "waiting")
    new.signal("add", "go")
    assert new.result(timeout=20)["tag"] == "new"
    runs = client._read("runs", "repl-1")
    assert [r["status"] for r in runs] == ["terminated", "completed"]
    assert runs[0]["error_message"] == "replaced" and runs[1]["run_id"] == new.run_id


def test_if_closed_allow_starts_a_new_run_of_a_finished_id(stack):
    client, _ = stack
    first = client.start(Quick, "one", id="again-1")
    assert first.result(timeout=20)["tag"] == "one"
    assert client.start(Quick, "ignored", id="again-1").result(timeout=20)["tag"] == "one"  # default: no new run
    with pytest.raises(WorkflowAlreadyStarted):
        client.start(Quick, "refused", id="again-1", if_closed="fail")
    with pytest.raises(WorkflowAlreadyStarted):
        client.start(Quick, "refused", id="again-1", if_closed="allow_failed")
    second = client.start(Quick, "two", id="again-1", if_closed="allow")
    # The handle knows its run: result() waits for it rather than answering with the finished first run.
    assert second.result(timeout=20) == {"tag": "two", "run_id": second.run_id, "first_step_at": pytest.approx(time.time(), abs=30)}
    assert client.get("again-1").result(timeout=5)["tag"] == "two"
    assert len(client._read("runs", "again-1")) == 2


def test_signal_with_start_is_seen_before_the_first_step(stack):
    client, _ = stack
    h = client.start(Gate, "sws", id="sws-1", start_signal="add", start_signal_args=["first"])
    wait_until(lambda: h.status() == "waiting", 20, "signal-with-start run waiting")
    assert h.query("first") == ["first"]
    client.start(Gate, "sws", id="sws-1", start_signal="add", start_signal_args=["go"])  # open: signal delivered
    assert h.result(timeout=20)["seen"] == ["first", "go"]


def test_update_with_start_runs_the_update_on_the_new_or_open_run(stack):
    client, _ = stack
    h, count = client.update_with_start(Gate, "uws", id="uws-1", update="push", update_args=["a"])
    assert count == 1 and h.id == "uws-1" and h.run_id
    h2, count = client.update_with_start(Gate, "ignored", id="uws-1", update="push", update_args=["b"])
    assert count == 2 and h2.run_id == h.run_id  # the open run took the update
    with pytest.raises(WorkflowAlreadyStarted):
        client.update_with_start(Gate, "x", id="uws-1", update="push", update_args=["c"], if_running="fail")
    with pytest.raises(ValueError, match="update must be"):
        client.update_with_start(Gate, "x", id="uws-1", update="")
    assert h.update("push", "go") == 3 and h.result(timeout=20)["seen"] == ["a", "b", "go"]


def test_start_delay_holds_the_first_step_durably(stack):
    client, _ = stack
    sent = time.time()
    h = client.start(Quick, "late", id="delay-1", start_delay=1.5)
    wait_until(lambda: h.status() == "pending", 10, "delayed run pending")
    assert h.result(timeout=30)["first_step_at"] >= sent + 1.5


def test_timeout_ends_the_execution_timed_out(stack):
    client, _ = stack
    h = client.start(Sleeper, 3600, id="to-1", timeout=1.0)
    with pytest.raises(WorkflowTimedOut):
        h.result(timeout=30)
    assert h.status() == "timed_out" and not h.running()
    chain = client.start(Relay, 0.3, 1000, id="to-2", timeout=2.0)
    with pytest.raises(WorkflowTimedOut):
        chain.result(timeout=30)
    assert len(client._read("runs", "to-2")) > 1  # the deadline spanned the continue-as-new chain


def test_unknown_policy_and_bad_values_are_refused_at_the_client(stack):
    client, _ = stack
    with pytest.raises(ValueError, match="unknown if_running policy"):
        client.start(Quick, "x", id="bad-1", if_running="replace")
    with pytest.raises(ValueError, match="start_delay"):
        client.start(Quick, "x", id="bad-1", start_delay=-1)
    with pytest.raises(ValueError, match="timeout"):
        client.start(Quick, "x", id="bad-1", timeout=-2)


def test_cli_start_options(stack, capsys):
    client, namespace = stack
    conn = ["--kafka", client.kafka, "--postgres", client.postgres, "--namespace", namespace]
    assert main(["start", "pol.Gate", '"cli"', "--id", "cli-1", "--start-signal", "add",
                 "--start-signal-arg", '"hello"', "--timeout", "60", *conn]) == 0
    assert capsys.readouterr().out.strip() == "cli-1"
    wait_until(lambda: client.get("cli-1").status() == "waiting", 20, "CLI-started run waiting")
    assert client.get("cli-1").query("first") == ["hello"]
    assert main(["start", "pol.Gate", '"cli"', "--id", "cli-1", "--if-running", "fail", *conn]) == EXIT_REFUSED
    assert "already started" in capsys.readouterr().err
    assert main(["start", "pol.Gate", "--id", "cli-1", "--if-running", "bogus", *conn]) == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err
    assert main(["start", "pol.Gate", "--id", "cli-2", "--start-delay", "-3", *conn]) == EXIT_USAGE
    assert "start_delay" in capsys.readouterr().err
    assert main(["start", "pol.Quick", '"p"', "--id", "cli-4", "--priority", "2", *conn]) == 0
    capsys.readouterr()
    wait_until(lambda: client.get("cli-4").status() == "completed", 20, "the CLI-started run with a priority")
    assert client.get("cli-4").history()[0]["priority"] == 2, "start --priority sets the run's priority"
    assert main(["start", "pol.Quick", '"p"', "--id", "cli-5", "--priority", "10", *conn]) == EXIT_USAGE
    assert "priority" in capsys.readouterr().err
    assert main(["start", "pol.Sleeper", "3600", "--id", "cli-3", "--timeout", "0.5", *conn]) == 0
    capsys.readouterr()
    assert main(["result", "cli-3", "--timeout", "30", *conn]) == EXIT_WORKFLOW
    assert "timed out" in capsys.readouterr().err
    client.get("cli-1").terminate()


def test_http_start_options(stack):
    from starlette.testclient import TestClient

    from actors.interfaces.http import create_app

    client, _ = stack
    with TestClient(create_app(client, webhook_auth="none"), raise_server_exceptions=False) as api:
        r = api.post("/workflows", json={"type": "pol.Gate", "args": ["h"], "id": "http-1",
                                         "start_signal": "add", "start_signal_args": ["via-http"], "timeout": 60})
        assert r.status_code == 201, r.text
        wait_until(lambda: client.get("http-1").status() == "waiting", 20, "HTTP-started run waiting")
        assert client.get("http-1").query("first") == ["via-http"]
        r = api.post("/workflows", json={"type": "pol.Gate", "id": "http-1", "if_running": "fail"})
        assert r.status_code == 409 and r.json()["error"] == "WorkflowAlreadyStarted"
        r = api.post("/workflows", json={"type": "pol.Gate", "id": "http-2", "if_closed": "sometimes"})
        assert r.status_code == 400 and "unknown if_closed policy" in r.json()["message"]
        r = api.post("/workflows", json={"type": "pol.Gate", "id": "http-2", "timeout": "soon"})
        assert r.status_code == 400 and "timeout" in r.json()["message"]
        r = api.post("/workflows", json={"type": "pol.Gate", "id": "http-2", "start_delay": -1})
        assert r.status_code == 400 and "start_delay" in r.json()["message"]
    with pytest.raises(WorkflowTerminated):
        client.get("http-1").terminate("done") or client.get("http-1").result(timeout=20)
