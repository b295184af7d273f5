"""Workflow streams (docs/API.md §10) end to end on real Kafka and PostgreSQL: ``workflow.stream`` in the code,
``handle.stream()`` (sync and async) and ``GET /workflows/{id}/stream`` (SSE) reading live, resuming from a
position and across continue-as-new; and the one payload limit (§11) at every place a payload is made."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from actors import AsyncClient, Client, PayloadTooLarge, WorkflowFailed, WorkflowNotFound
from actors.interfaces.http import bind, create_app, server
from actors.testing import WorkflowEnvironment
from tests.apps.streams_app import Counter, Emitter, Oversize
from tests.processes import wait_until
from tests.stack import module_stack


@pytest.fixture(scope="module")
def client(kafka_server, pg_server, tmp_path_factory):
    with module_stack(kafka_server, pg_server, tmp_path_factory.mktemp("node"), "streams") as c:
        yield c


@pytest.fixture(scope="module")
def base_url(client: Client):
    sock = bind("127.0.0.1", 0)
    srv = server(create_app(client, webhook_auth="none"), sock)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


class _Reader(threading.Thread):
    """Iterates ``handle.stream(...)`` in the background, noting when each item arrived."""

    def __init__(self, handle: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.handle, self.kwargs = handle, kwargs
        self.items: list[tuple[Any, float]] = []
        self.error: BaseException | None = None
        self.ended = False

    def run(self) -> None:
        try:
            for item in self.handle.stream(**self.kwargs):
                self.items.append((item, time.monotonic()))
            self.ended = True
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def values(self) -> list[Any]:
        return [v for v, _ in self.items]


def test_reader_gets_each_item_live_while_the_workflow_runs_then_the_end(client: Client) -> None:
    h = client.start(Emitter, id="live-1")
    reader = _Reader(h, timeout=120)
    reader.start()
    latencies = []
    for i in range(5):
        sent = time.monotonic()
        h.signal("emit", {"token": i})
        wait_until(lambda i=i: len(reader.items) == i + 1, 30, f"item {i} read live")
        latencies.append(reader.items[-1][1] - sent)
        assert h.running() and not reader.ended  # read while the workflow still runs
    h.signal("finish")
    reader.join(30)
    assert reader.error is None and reader.ended
    assert reader.values() == [{"token": i} for i in range(5)]
    assert h.result(timeout=10) == 5
    print(f"signal -> streamed item read: median {sorted(latencies)[2] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    # An ended workflow's stream is read to its end at once, and again from any position.
    assert list(h.stream()) == [{"token": i} for i in range(5)]


def test_resume_from_a_position_and_bad_positions(client: Client) -> None:
    h = client.start(Counter, 5, id="resume-1")
    assert h.result(timeout=30) == "5 items"
    assert list(h.stream(after=2)) == [{"run": 1, "i": i} for i in (2, 3, 4)]
    assert list(h.stream(after=5)) == []
    assert list(h.stream(after=99)) == []
    for bad in (-1, "1", 1.5, True, None):
        with pytest.raises(ValueError, match="after must be a position"):
            h.stream(after=bad)
    with pytest.raises(ValueError, match="timeout"):
        h.stream(timeout=0)
    with pytest.raises(WorkflowNotFound):
        list(client.get("no-such-stream").stream(timeout=1))


def test_positions_go_on_across_continue_as_new(client: Client) -> None:
    h = client.start(Counter, 3, 3, id="chain-1")
    reader = _Reader(h, timeout=60)
    reader.start()
    assert h.result(timeout=60) == "9 items"
    reader.join(30)
    expected = [{"run": run, "i": i} for run in (1, 2, 3) for i in range(3)]
    assert reader.error is None and reader.values() == expected
    assert len(client._read("runs", "chain-1")) == 3
    assert list(h.stream(after=4)) == expected[4:]  # position 5 is the second item of run 2


def test_timeout_ends_a_stream_of_a_workflow_that_goes_on(client: Client) -> None:
    h = client.start(Emitter, id="timeout-1")
    h.signal("emit", "a")
    started = time.monotonic()
    got = []
    with pytest.raises(TimeoutError, match="timeout-1"):
        for item in h.stream(timeout=3):
            got.append(item)
    assert got == ["a"] and 2.5 < time.monotonic() - started < 30
    h.terminate("done")


def test_async_handle_stream_reads_live_and_resumes(client: Client) -> None:
    async def main() -> tuple[list, list]:
        async with AsyncClient(client.kafka, client.postgres, client.namespace) as aclient:
            h = await aclient.start(Emitter, id="async-1")
            got: list = []

            async def read() -> None:
                async for item in h.stream(timeout=60):
                    got.append(item)

            task = asyncio.create_task(read())
            for i in range(3):
                await h.signal("emit", i)
                deadline = time.monotonic() + 30
                while len(got) < i + 1:  # the loop runs while the reader waits: nothing blocks it
                    assert time.monotonic() < deadline, f"item {i} not read"
                    await asyncio.sleep(0.02)
            await h.signal("finish")
            await asyncio.wait_for(task, 30)
            with pytest.raises(ValueError, match="after must be a position"):
                h.stream(after=-2)
            return got, [item async for item in h.stream(after=1)]

    got, resumed = asyncio.run(main())
    assert got == [0, 1, 2] and resumed == [1, 2]


def _events(response: httpx.Response) -> Iterator[dict]:
    """SSE events with data (``id``, ``event``, ``data``) of a streamed response, as they arrive."""
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                yield current
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")


def _sse(response: httpx.Response) -> list[dict]:
    return list(_events(response))


def test_sse_live_resume_with_last_event_id_and_errors(client: Client, base_url: str) -> None:
    h = client.start(Emitter, id="sse/1")  # a '/' in the id: the route matches the encoded path
    url = f"{base_url}/workflows/sse%2F1/stream"
    got: list[dict] = []

    def read() -> None:
        with httpx.stream("GET", url, timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for event in _events(r):
                got.append(event)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    for i in range(3):
        h.signal("emit", f"tok{i}")
        wait_until(lambda i=i: sum(1 for e in got if "id" in e) == i + 1 or not thread.is_alive(), 30, f"SSE item {i}: {got}")
    h.signal("finish")
    thread.join(30)
    items = [e for e in got if "id" in e]
    assert [(e["id"], json.loads(e["data"])) for e in items] == [("1", "tok0"), ("2", "tok1"), ("3", "tok2")]
    assert got[-1]["event"] == "end" and json.loads(got[-1]["data"]) == {"status": "completed"}
    # Resume: Last-Event-ID (what EventSource sends) wins over ?after=.
    with httpx.stream("GET", url + "?after=0", headers={"Last-Event-ID": "2"}, timeout=30) as r:
        resumed = _sse(r)
    assert [json.loads(e["data"]) for e in resumed if "id" in e] == ["tok2"]
    with httpx.stream("GET", url + "?after=1", timeout=30) as r:
        assert [e["id"] for e in _sse(r) if "id" in e] == ["2", "3"]
    for bad in ("?after=-1", "?after=x", "?after=1.5", "?timeout=0", "?timeout=soon"):
        r = httpx.get(url + bad, timeout=10)
        assert r.status_code == 400 and r.json()["error"] == "BadRequest", bad
    r = httpx.get(url, headers={"Last-Event-ID": "abc"}, timeout=10)
    assert r.status_code == 400
    r = httpx.get(f"{base_url}/workflows/no-such-id/stream", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "WorkflowNotFound"


def test_sse_timeout_event(client: Client, base_url: str) -> None:
    h = client.start(Emitter, id="sse-timeout")
    h.signal("emit", 1)
    with httpx.stream("GET", f"{base_url}/workflows/sse-timeout/stream?timeout=2", timeout=30) as r:
        events = _sse(r)
    assert [e.get("event") for e in events] == [None, "timeout"] and events[0]["id"] == "1"
    h.terminate()


# -- one payload limit everywhere (METAMORPH_MAX_PAYLOAD) ---------------------------------------------------

LIMIT = 10_000


def test_payload_limit_on_a_node_and_a_worker(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAMORPH_MAX_PAYLOAD", str(LIMIT))
    with pytest.raises(PayloadTooLarge, match="limit is 10000 bytes"):
        client.start(Oversize, "result", 1, "x" * LIMIT)  # the client: refused before any send
    caught = client.start(Oversize, "stream", 2 * LIMIT, id="big-stream")
    assert "PayloadTooLarge" in caught.result(timeout=30) and list(caught.stream()) == ["caught"]
    for where in ("result", "activity_args", "activity_result"):
        h = client.start(Oversize, where, 2 * LIMIT, id=f"big-{where}")
        with pytest.raises(WorkflowFailed, match="PayloadTooLarge") as failed:
            h.result(timeout=30)
        assert "limit is 10000 bytes" in str(failed.value), where
        if where == "activity_result":  # the worker refused its own result: one attempt, not retried
            attempts = h.exceptions()
            assert [(e["activity"], e["error_type"]) for e in attempts][0] == ("streams.big", "PayloadTooLarge")
            assert "PayloadTooLarge" in attempts[0]["message"]
    # Under the limit all of it works.
    assert client.start(Oversize, "result", LIMIT - 100).result(timeout=30) == "z" * (LIMIT - 100)


def test_a_2_mb_result_passes_on_a_node_as_in_the_environment(client: Client) -> None:
    """The default limit (2 MiB) holds for every payload: a 2,000,000-byte activity result and workflow result
    (a record each of about 2 MB) travel through Kafka and PostgreSQL, as they pass in WorkflowEnvironment."""
    size = 2_000_000
    assert client.start(Oversize, "activity_result", size).result(timeout=60) == "x" * size
    assert client.start(Oversize, "result", size).result(timeout=60) == "z" * size
    env = WorkflowEnvironment()
    assert env.result(env.start(Oversize, "activity_result", size)) == "x" * size


def test_payload_limit_is_the_same_in_the_workflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAMORPH_MAX_PAYLOAD", str(LIMIT))
    env = WorkflowEnvironment()
    with pytest.raises(PayloadTooLarge, match="limit is 10000 bytes"):
        env.start(Oversize, "result", "x" * LIMIT)
    wid = env.start(Oversize, "stream", 2 * LIMIT)
    assert "PayloadTooLarge" in env.result(wid) and env.stream(wid) == ["caught"]
    for where in ("result", "activity_args", "activity_result"):
        wid = env.start(Oversize, where, 2 * LIMIT)
        with pytest.raises(WorkflowFailed, match="PayloadTooLarge"):
            env.result(wid)
    assert env.result(env.start(Oversize, "result", LIMIT - 100)) == "z" * (LIMIT - 100)


def test_workflow_environment_streams_across_continue_as_new() -> None:
    env = WorkflowEnvironment()
    wid = env.start(Counter, 2, 2)
    assert env.result(wid) == "4 items"
    assert env.stream(wid) == [{"run": r, "i": i} for r in (1, 2) for i in range(2)]
    assert env.stream(wid, after=3) == [{"run": 2, "i": 1}]


def test_cli_stream_prints_json_lines(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    from actors.interfaces.cli import EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, main

    engine = ["--kafka", client.kafka, "--postgres", client.postgres or "", "--namespace", client.namespace]
    h = client.start(Counter, 3, id="cli-stream")
    h.result(timeout=30)
    capsys.readouterr()
    assert main(["stream", "cli-stream", "--after", "1", *engine]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"run": 1, "i": 1}, {"run": 1, "i": 2}]
    open_one = client.start(Emitter, id="cli-open")
    assert main(["stream", "cli-open", "--timeout", "1", *engine]) == EXIT_TIMEOUT
    assert main(["stream", "cli-open", "--after", "-1", *engine]) == EXIT_USAGE
    open_one.terminate()


def test_a_reset_run_does_not_stream_its_copied_items_again(client: Client) -> None:
    h = client.start(Emitter, id="reset-1")
    h.signal("emit", "a")
    h.signal("emit", "b")
    items_at = {}

    def streamed() -> dict:
        items_at.clear()
        items_at.update({e["value"]: e["seq"] for e in h.history() if e["type"] == "StreamAppended"})
        return items_at

    wait_until(lambda: len(streamed()) == 2, 30, "two items recorded")
    h.reset(items_at["a"])  # the new run copies the history up to and including item "a"
    wait_until(lambda: h.describe()["continued_from"] is not None and h.status() == "waiting", 30, "the reset run")
    h.signal("emit", "c")
    h.signal("finish")
    assert h.result(timeout=30) == 2  # the new run streamed "a" (copied) and "c"
    assert list(h.stream()) == ["a", "b", "c"]  # "a" once: the copy is not a new item


def test_encrypted_stream_items_are_stored_encrypted_and_read_in_clear(client: Client) -> None:
    import os

    from actors import codecs
    from projections.db import connect

    codecs.set_codec(codecs.EncryptionCodec(keys={"k1": os.urandom(32)}, active="k1"))
    try:
        h = client.start(Emitter, id="secret-1")
        h.signal("emit", {"token": "plaintext-canary-4711"})
        h.signal("finish")
        assert h.result(timeout=30) == 1
        assert list(h.stream()) == [{"token": "plaintext-canary-4711"}]
        with connect(client.postgres or "", client.namespace) as conn:
            rows = conn.execute("SELECT h.data::text FROM stream_items s JOIN history h USING (workflow_id, run_id, seq)"
                                " WHERE s.workflow_id = 'secret-1'").fetchall()
        assert len(rows) == 1 and "$encrypted" in rows[0][0] and "plaintext-canary" not in rows[0][0]
    finally:
        codecs.set_codec(None)
        codecs.reset_codec()
