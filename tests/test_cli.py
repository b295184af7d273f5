"""The ``metamorph`` command line against a real broker, PostgreSQL, node and projector.

Client commands run in-process through ``main([...])`` (fast, stdout captured); the process commands
(``--help``, ``node``, ``projector``, ``dev``) run as real subprocesses, because what matters there is what
a shell sees: output, signals and exit statuses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from actors import Workflow, activity, query, update, workflow
from actors import signal as signal_handler
from actors.interfaces.cli import main
from tests.stack import running_stack

ROOT = Path(__file__).resolve().parents[1]


# -- the app under test ----------------------------------------------------------------------------------
@activity(name="cli.charge")
def charge(order_id: str, amount: int) -> str:
    return f"receipt-{order_id}-{amount}"


@activity(name="cli.explode", tries=1)
def explode(message: str) -> None:
    raise RuntimeError(message)


class CliOrder(Workflow):
    name = "cli.Order"

    def __init__(self) -> None:
        self.approved_by: str | None = None
        self.notes: list[str] = []

    async def execute(self, order_id: str, amount: int = 1) -> dict:
        receipt = await workflow.activity(charge, order_id, amount)
        await workflow.wait(lambda: self.approved_by is not None)
        return {"receipt": receipt, "approved_by": self.approved_by, "notes": self.notes}

    @signal_handler
    def approve(self, by: str) -> None:
        self.approved_by = by

    @query
    def state(self) -> dict:
        return {"approved_by": self.approved_by, "notes": self.notes}

    @update
    def note(self, text: str) -> int:
        self.notes.append(text)
        return len(self.notes)


class CliFails(Workflow):
    name = "cli.Fails"

    async def execute(self, message: str) -> None:
        await workflow.activity(explode, message)


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(kafka_server, pg_server, tmp_path_factory) -> Iterator[list[str]]:
    """One node and one projector for the module; yields the connection options for ``main``."""
    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), prefix="cli") as (client, _node, ns):
        yield ["--kafka", kafka_server.bootstrap, "--postgres", client.postgres, "--namespace", ns]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def wait_for_status(capsys, opts: list[str], workflow_id: str, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, out, _ = run(capsys, "status", workflow_id, "--json", *opts)
        if code == 0 and json.loads(out)["status"] == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"{workflow_id} never reached {wanted}")


# -- help and usage --------------------------------------------------------------------------------------
def test_help_in_a_real_process_documents_exit_codes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "actors.interfaces.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "exit codes" in done.stdout and "5 Kafka or PostgreSQL unreachable" in done.stdout
    assert all(
        cmd in done.stdout
        for cmd in ("init", "node", "worker", "projector", "serve", "dev", "start", "result")
    )
    script = shutil.which("metamorph", path=str(Path(sys.executable).parent))
    if script:  # installed with pip install -e .: the console script is the same entry point
        assert subprocess.run([script, "--help"], capture_output=True, timeout=30).returncode == 0


def test_usage_errors_exit_2(capsys) -> None:
    assert run(capsys, "start")[0] == 2  # TYPE missing
    assert run(capsys, "no-such-command")[0] == 2
    code, _, err = run(capsys, "status", "x", "--namespace", "n")  # no PostgreSQL configured
    assert code == 2 and err.startswith("error: ") and "PostgreSQL" in err and "Traceback" not in err


# -- client round trips ----------------------------------------------------------------------------------
def test_start_status_query_update_signal_result(capsys, engine) -> None:
    wid = f"order-{uuid.uuid4().hex[:6]}"
    code, out, _ = run(capsys, "start", "cli.Order", "A-1", "5", "--id", wid, *engine)
    assert (code, out.strip()) == (0, wid)
    code, out, _ = run(capsys, "status", wid, *engine)
    assert code == 0 and f"id:      {wid}" in out and "type:    cli.Order" in out
    wait_for_status(capsys, engine, wid, "waiting")

    code, out, _ = run(capsys, "update", wid, "note", "first", *engine)
    assert (code, out.strip()) == (0, "1")
    code, out, _ = run(capsys, "query", wid, "state", "--json", *engine)
    assert code == 0 and json.loads(out) == {"id": wid, "result": {"approved_by": None, "notes": ["first"]}}

    code, out, _ = run(capsys, "signal", wid, "approve", '"alice"', *engine)
    assert code == 0 and "approve" in out
    code, out, _ = run(capsys, "result", wid, "--timeout", "30", *engine)
    assert code == 0
    assert json.loads(out) == {"receipt": "receipt-A-1-5", "approved_by": "alice", "notes": ["first"]}
    code, out, _ = run(capsys, "result", wid, "--json", *engine)
    assert code == 0 and json.loads(out)["status"] == "completed"

    code, out, _ = run(capsys, "status", wid, "--json", *engine)
    row = json.loads(out)
    assert row["id"] == wid and row["status"] == "completed" and row["output"]["approved_by"] == "alice"

    code, out, _ = run(capsys, *engine, "list", "--type", "cli.Order")  # options before the command work too
    assert (
        code == 0
        and out.splitlines()[0].split() == ["ID", "TYPE", "STATUS", "CREATED", "UPDATED"]
        and wid in out
    )
    code, out, _ = run(capsys, "list", "--json", "--status", "completed", "--limit", "50", *engine)
    assert code == 0 and wid in {r["id"] for r in json.loads(out)}

    code, out, _ = run(capsys, "history", wid, *engine)
    assert code == 0 and out.splitlines()[0].split() == ["SEQ", "AT", "TYPE", "DETAILS"]
    assert "WorkflowStarted" in out and "WorkflowCompleted" in out
    code, out, _ = run(capsys, "history", wid, "--json", *engine)
    events = json.loads(out)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events) and all(
        {"seq", "type", "at"} <= set(e) for e in events
    )


def test_json_args_fall_back_to_plain_strings(capsys, engine) -> None:
    wid = f"order-{uuid.uuid4().hex[:6]}"
    assert run(capsys, "start", "cli.Order", "not json {", "--id", wid, "--json", *engine)[0] == 0
    wait_for_status(capsys, engine, wid, "waiting")
    code, out, _ = run(capsys, "status", wid, "--json", *engine)
    assert json.loads(out)["input"] == ["not json {"]
    run(capsys, "terminate", wid, *engine)


def test_failure_cancel_terminate_retry_and_exit_codes(capsys, engine) -> None:
    code, _, err = run(capsys, "status", "no-such-workflow", *engine)
    assert code == 3 and err.strip() == "error: no workflow with id 'no-such-workflow'"
    assert run(capsys, "signal", "no-such-workflow", "approve", *engine)[0] == 3

    failing = f"fails-{uuid.uuid4().hex[:6]}"
    run(capsys, "start", "cli.Fails", "boom", "--id", failing, *engine)
    code, out, err = run(capsys, "result", failing, "--timeout", "30", *engine)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "boom" in err
    code, out, _ = run(capsys, "result", failing, "--json", *engine)
    assert code == 1 and json.loads(out)["status"] == "failed"
    code, out, _ = run(capsys, "exceptions", failing, *engine)
    assert code == 0 and "activity cli.explode attempt 1: RuntimeError: boom" in out
    code, out, _ = run(capsys, "exceptions", failing, "--json", *engine)
    assert code == 0 and any(e["activity"] == "cli.explode" for e in json.loads(out))
    assert run(capsys, "retry", failing, *engine)[0] == 0

    waiting = f"order-{uuid.uuid4().hex[:6]}"
    run(capsys, "start", "cli.Order", "B", "--id", waiting, *engine)
    wait_for_status(capsys, engine, waiting, "waiting")
    code, _, err = run(capsys, "result", waiting, "--timeout", "0.5", *engine)
    assert code == 4 and err.startswith("error: ")
    code, _, err = run(capsys, "query", waiting, "no_such_query", *engine)
    assert code == 6 and err.startswith("error: refused")
    code, _, err = run(capsys, "retry", waiting, *engine)
    assert code == 6 and "failed" in err
    assert run(capsys, "cancel", waiting, *engine)[0] == 0
    code, out, _ = run(capsys, "result", waiting, "--timeout", "30", "--json", *engine)
    assert code == 1 and json.loads(out)["status"] == "cancelled"

    other = f"order-{uuid.uuid4().hex[:6]}"
    run(capsys, "start", "cli.Order", "C", "--id", other, *engine)
    wait_for_status(capsys, engine, other, "waiting")
    assert run(capsys, "terminate", other, "--reason", "no longer needed", *engine)[0] == 0
    code, _, err = run(capsys, "result", other, "--timeout", "30", *engine)
    assert code == 1 and "terminated" in err and "no longer needed" in err


def test_acting_on_an_ended_workflow_is_refused_and_a_bogus_status_is_a_usage_error(capsys, engine) -> None:
    """docs/API.md §14: exit status 6 (refused) when the command could do nothing; 2 for an unknown status."""
    ended = f"order-{uuid.uuid4().hex[:6]}"
    run(capsys, "start", "cli.Order", "E", "--id", ended, *engine)
    wait_for_status(capsys, engine, ended, "waiting")
    assert run(capsys, "terminate", ended, *engine)[0] == 0
    wait_for_status(capsys, engine, ended, "terminated")
    for argv in (["signal", ended, "approve", '"bob"'], ["cancel", ended], ["terminate", ended],
                 ["update", ended, "note", '"x"']):
        code, out, err = run(capsys, *argv, *engine)
        assert (code, out) == (6, ""), argv
        assert err.startswith("error: refused") and "is not running (it is terminated)" in err, argv
    code, out, err = run(capsys, "list", "--status", "bogus", *engine)
    assert (code, out) == (2, "") and "unknown status 'bogus'" in err and "completed" in err


def test_unreachable_broker_and_database_exit_5_quickly(capsys, engine) -> None:
    began = time.monotonic()
    code, out, err = run(capsys, "start", "cli.Order", "x", "--kafka", "127.0.0.1:9", "--namespace", "n")
    assert code == 5 and out == ""
    assert err.startswith("error: Kafka broker at 127.0.0.1:9 is unreachable") and len(err.splitlines()) == 1
    code, _, err = run(
        capsys, "status", "x", "--postgres", "postgresql://nobody:pw-secret@127.0.0.1:9/nothing"
    )
    assert code == 5 and err.startswith("error: PostgreSQL") and "Traceback" not in err
    assert "pw-secret" not in err and "nobody:***@" in err
    code, _, err = run(capsys, "init", "--kafka", "127.0.0.1:9")
    assert code == 5 and "127.0.0.1:9" in err
    assert time.monotonic() - began < 10


# -- init ------------------------------------------------------------------------------------------------
def test_init_is_idempotent_and_refuses_another_partition_count(capsys, kafka, namespace, pg_url) -> None:
    opts = ["--kafka", kafka, "--postgres", pg_url, "--namespace", namespace]
    code, _, err = run(capsys, "start", "cli.Order", "too-early", *opts)
    assert code == 2 and "run `metamorph init` first" in err  # and no topic was auto-created meanwhile
    code, out, _ = run(capsys, "init", "--partitions", "2", *opts)
    assert (
        code == 0
        and f"{namespace}.commands" in out
        and "2 partition(s)" in out
        and "applied migration" in out
    )
    code, out, _ = run(capsys, "init", "--partitions", "2", "--queues", "default,emails", *opts)
    assert code == 0 and "already up to date" in out and f"{namespace}.activities.emails" in out
    assert run(capsys, "init", *opts)[0] == 0  # no --partitions: joins whatever exists
    code, out, err = run(capsys, "init", "--partitions", "3", *opts)
    assert code == 2 and out == "" and "partitions" in err and "3" in err and len(err.splitlines()) == 1


# -- process commands ------------------------------------------------------------------------------------
class _Process:
    """A ``metamorph`` subprocess whose stdout one thread collects, so tests can wait for lines."""

    def __init__(self, *argv: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actors.interfaces.cli", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((x for x in self.lines if needle in x), None), timeout
            )
        if not found:
            raise AssertionError(f"no {needle!r} in the output of {self.proc.args}:\n{''.join(self.lines)}")
        return found

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager would send it; the exit status (SIGKILL and -9 if it hangs)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def test_node_and_projector_processes_run_a_workflow_and_stop_on_sigterm(
    capsys, kafka, namespace, pg_url, tmp_path
) -> None:
    opts = ["--kafka", kafka, "--postgres", pg_url, "--namespace", namespace]
    assert run(capsys, "init", "--partitions", "2", *opts)[0] == 0
    node = _Process("node", "--app", "tests.test_cli", "--data-dir", str(tmp_path), "--name", "n1", *opts)
    projector = _Process("projector", *opts)
    try:
        assert "partitions" in node.wait_for("node n1 running")
        projector.wait_for("projector running")
        wid = f"order-{uuid.uuid4().hex[:6]}"
        assert run(capsys, "start", "cli.Order", "P", "--id", wid, *opts)[0] == 0
        wait_for_status(capsys, opts, wid, "waiting", timeout=30)
        assert run(capsys, "signal", wid, "approve", "bob", *opts)[0] == 0
        code, out, _ = run(capsys, "result", wid, "--timeout", "30", *opts)
        assert code == 0 and json.loads(out)["approved_by"] == "bob"
    finally:
        assert node.stop() == 0, "".join(node.lines)
        assert projector.stop() == 0, "".join(projector.lines)
    assert any("node stopped" in x for x in node.lines) and any(
        "projector stopped" in x for x in projector.lines
    )


def test_dev_runs_everything_in_one_process_and_stops_cleanly(kafka, namespace, pg_url, tmp_path) -> None:
    dev = _Process(
        "dev",
        "--app",
        "tests.test_cli",
        "--kafka",
        kafka,
        "--postgres",
        pg_url,
        "--namespace",
        namespace,
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--partitions",
        "2",
        "--data-dir",
        str(tmp_path),
    )
    try:
        url = dev.wait_for("HTTP API").split()[2]
        dev.wait_for("Press Ctrl-C")
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            wid = http.post("/workflows", json={"type": "cli.Order", "args": ["D"]}).json()["id"]
            deadline = time.monotonic() + 30
            while (
                http.get(f"/workflows/{wid}").json().get("status") != "waiting"
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            assert http.post(f"/workflows/{wid}/signal/approve", json={"args": ["dev"]}).status_code == 202
            while (
                http.get(f"/workflows/{wid}").json().get("status") != "completed"
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            assert http.get(f"/workflows/{wid}").json()["output"]["approved_by"] == "dev"
    finally:
        assert dev.stop() == 0, "".join(dev.lines)
    assert "stopped\n" in dev.lines
