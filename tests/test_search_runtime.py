"""Search attributes, memo, filtered and paged lists, count and batch (docs/API.md §6, §7, §10) end to end: real
Kafka, a node, the projector, PostgreSQL, and the CLI and HTTP surfaces over the same client."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from actors import WorkflowCancelled, WorkflowTerminated
from actors.client.sync import WorkflowPage
from actors.interfaces.cli import EXIT_USAGE, main
from actors.interfaces.http import create_app
from tests.apps.search_app import Idle, Tagged
from tests.processes import wait_until
from tests.stack import running_stack


@pytest.fixture(scope="module")
def stack(kafka_server, pg_server, tmp_path_factory):
    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), prefix="srch") as (
        client, _node, namespace,
    ):
        yield client, ["--kafka", kafka_server.bootstrap, "--postgres", client.postgres, "--namespace", namespace]


@pytest.fixture(scope="module")
def orders(stack):
    """12 open Idle workflows: customers c-0..c-3, amounts 0, 50, ... 550, vip on every third."""
    client, _ = stack
    ids = []
    for i in range(12):
        h = client.start(Idle, id=f"order-{i:02d}",
                         search={"customer": f"c-{i % 4}", "amount": i * 50, "vip": i % 3 == 0, "kind": "order"},
                         memo={"note": f"order {i}"})
        ids.append(h.id)
    wait_until(lambda: client.count(type="search.Idle", status="waiting") == 12, 30, "12 orders waiting")
    return ids


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_attributes_set_at_start_and_by_the_code_are_projected(stack):
    client, _ = stack
    h = client.start(Tagged, "new", id="tag-1", search={"customer": "c-9", "obsolete": 1}, memo={"by": "alice"})
    wait_until(lambda: h.status() == "waiting" and client.list(search={"step": 2}), 20, "second upsert projected")
    row = h.describe()
    assert row["search"] == {"customer": "c-9", "stage": "new", "step": 2}  # a None upsert removed "obsolete"
    assert row["memo"] == {"by": "alice", "note": "stage new"}
    [summary] = client.list(search={"customer": "c-9"})
    assert (summary.id, summary.search, summary.memo, summary.run_id) == ("tag-1", row["search"], row["memo"], row["run_id"])
    assert summary.parent_id is None and summary.closed_at is None
    assert [e["type"] for e in h.history()].count("AttributesUpserted") == 3
    h.signal("finish")
    assert h.result(timeout=20) == "new"
    assert client.list(search={"customer": "c-9"})[0].closed_at is not None


def test_continue_as_new_keeps_the_attributes_and_memo(stack):
    client, _ = stack
    h = client.start(Tagged, "first", True, id="tag-2", search={"customer": "c-10"}, memo={"by": "bob"})
    wait_until(lambda: client.count(search={"customer": "c-10", "stage": "continued", "step": 2}) == 1, 20,
               "the continued run's upserts")
    [summary] = client.list(search={"customer": "c-10"})
    assert summary.memo == {"by": "bob", "note": "stage continued"} and summary.status == "waiting"
    h.signal("finish")
    assert h.result(timeout=20) == "continued"


def test_filters_with_every_operator(stack, orders):
    client, _ = stack
    idle = {"type": "search.Idle"}

    def ids(**search) -> set[str]:
        page = client.list(**idle, search=search)
        assert [(s.created_at, s.id) for s in page] == sorted(((s.created_at, s.id) for s in page), reverse=True)
        return {s.id for s in page}

    def orders_(*numbers: int) -> set[str]:
        return {f"order-{i:02d}" for i in numbers}

    assert ids(customer="c-1") == orders_(1, 5, 9)
    assert ids(amount=(">", 400)) == orders_(9, 10, 11)
    assert ids(amount=(">=", 500), customer="c-2") == orders_(10)
    assert ids(amount=("<", 100)) == orders_(0, 1)
    assert ids(amount=("<=", 50.0)) == orders_(0, 1)
    assert ids(customer=("in", ["c-0", "c-3"]), amount=("<", 200)) == orders_(0, 3)
    assert len(ids(customer=("!=", "c-0"))) == 9
    assert ids(vip=True, amount=(">", 300)) == orders_(9)
    assert ids(customer=("=", 7)) == set()  # a number never equals a string attribute
    assert ids(amount=(">", "a")) == set()  # nor does a string compare with a number
    assert client.count(**idle, search={"vip": True}) == 4
    assert client.count(**idle, search={"nope": ("!=", 1)}) == 0
    now = datetime.now(UTC)
    assert client.count(**idle, started_after=now - timedelta(hours=1)) == 12
    assert client.count(**idle, started_before=now - timedelta(hours=1)) == 0
    assert client.count(**idle, started_after=(now + timedelta(hours=1)).isoformat()) == 0


def test_keyset_pages_are_stable_while_new_workflows_arrive(stack, orders):
    client, _ = stack
    # Newest first by (created_at, id): the node's event time, so the order of the partitions' processing.
    everything = [s.id for s in client.list(type="search.Idle", search={"kind": "order"})]
    assert sorted(everything) == orders
    page = client.list(type="search.Idle", search={"kind": "order"}, limit=5)
    assert isinstance(page, WorkflowPage) and [s.id for s in page] == everything[:5]
    client.start(Idle, id="order-new", search={"kind": "order"})  # newer than every page: must not shift them
    wait_until(lambda: client.count(search={"kind": "order"}) == 13, 20, "the newcomer projected")
    seen = [s.id for s in page]
    while page.next_cursor:
        page = client.list(type="search.Idle", search={"kind": "order"}, limit=5, cursor=page.next_cursor)
        seen += [s.id for s in page]
    assert seen == everything
    assert client.list(search={"kind": "order"}, limit=13).next_cursor is None  # exactly one full last page
    with pytest.raises(ValueError, match="invalid cursor"):  # a cursor of another query
        client.list(type="search.Idle", search={"kind": "other"}, cursor=client.list(search={"kind": "order"}, limit=1).next_cursor)
    client.get("order-new").terminate("done")


def test_batch_signal_cancel_and_terminate_skip_ended_workflows(stack, orders):
    client, _ = stack
    assert client.batch("signal", type="search.Idle", search={"customer": "c-3"}, signal="poke", args=["batch"]) == 3
    assert client.batch("signal", search={"customer": "c-3"}, signal="finish") == 3
    for wid in ("order-03", "order-07", "order-11"):
        assert client.get(wid).result(timeout=20) == ["batch"]
    wait_until(lambda: client.count(search={"customer": "c-3"}, status="completed") == 3, 20, "projected")
    assert client.batch("cancel", search={"customer": "c-3"}) == 0  # all ended: nothing to act on
    assert client.batch("cancel", search={"customer": "c-2"}) == 3
    for wid in ("order-02", "order-06", "order-10"):
        with pytest.raises(WorkflowCancelled):
            client.get(wid).result(timeout=20)
    assert client.batch("terminate", status="completed", search={"customer": "c-3"}) == 0
    with pytest.raises(ValueError, match="unknown batch action"):
        client.batch("suspend", search={"customer": "c-0"})


def test_cli_list_count_batch_and_bad_inputs(stack, orders, capsys):
    client, opts = stack
    code, out, err = run(capsys, "list", "--type", "search.Idle", "--search", "customer=c-1", "--search", "amount>100",
                         "--limit", "1", "--json", *opts)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 1 and rows[0]["id"] in ("order-05", "order-09") and rows[0]["search"]["amount"] > 100
    cursor = err.split("next_cursor:", 1)[1].strip()
    code, out, err = run(capsys, "list", "--type", "search.Idle", "--search", "customer=c-1", "--search", "amount>100",
                         "--limit", "1", "--cursor", cursor, "--json", *opts)
    second = json.loads(out)
    assert code == 0 and {rows[0]["id"], second[0]["id"]} == {"order-05", "order-09"} and "next_cursor" not in err
    after = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    code, out, _ = run(capsys, "count", "--type", "search.Idle", "--search", "customer in c-0,c-1", "--after", after, *opts)
    assert code == 0 and out.strip() == "6"
    code, out, _ = run(capsys, "list", "--search", "customer=c-0", "--type", "search.Idle", *opts)
    assert code == 0 and out.splitlines()[0].split()[-1] == "SEARCH" and "customer=c-0" in out
    code, out, _ = run(capsys, "start", "search.Idle", "--id", "cli-1", "--search", "customer=c-cli", "--search",
                       "amount=5", "--memo", '{"via": "cli"}', *opts)
    assert code == 0
    wait_until(lambda: client.count(search={"customer": "c-cli", "amount": 5}) == 1, 20, "cli start projected")
    code, out, _ = run(capsys, "batch", "signal", "--search", "customer=c-cli", "--signal", "poke", "--arg", '"cli"',
                       "--json", *opts)
    assert code == 0 and json.loads(out) == {"action": "signal", "count": 1}
    code, out, _ = run(capsys, "batch", "terminate", "--search", "customer=c-cli", "--reason", "cli done", *opts)
    assert code == 0 and out.strip() == "terminate: 1 workflow"
    with pytest.raises(WorkflowTerminated):
        client.get("cli-1").result(timeout=20)
    for bad in (["list", "--search", "amount~1"], ["list", "--cursor", "garbage"], ["count", "--status", "bogus"],
                ["batch", "suspend"], ["list", "--search", "amount like 1"]):
        code, _, err = run(capsys, *bad, *opts)
        assert code == EXIT_USAGE and err.startswith("error:"), (bad, err)


def test_http_list_count_batch_and_the_read_only_guard(stack, orders):
    from starlette.testclient import TestClient

    client, _ = stack
    app = create_app(client, webhook_auth="none", api_tokens="ops:secret,ro:viewer:look")
    ro, rw = {"Authorization": "Bearer look"}, {"Authorization": "Bearer secret"}
    with TestClient(app, raise_server_exceptions=False) as api:
        q = {"type": "search.Idle", "search": ["customer=c-1", "amount>=50"], "limit": "2"}
        r = api.get("/workflows", params=q, headers=ro)
        body = r.json()
        first = [w["id"] for w in body["workflows"]]
        assert r.status_code == 200 and len(first) == 2 and body["next_cursor"]
        assert {w["memo"]["note"] for w in body["workflows"]} <= {"order 1", "order 5", "order 9"}
        r = api.get("/workflows", params={**q, "cursor": body["next_cursor"]}, headers=ro)
        assert r.json()["next_cursor"] is None
        assert sorted(first + [w["id"] for w in r.json()["workflows"]]) == ["order-01", "order-05", "order-09"]
        r = api.get("/workflows/count", params={"type": "search.Idle", "search": "vip=true"}, headers=ro)
        assert r.status_code == 200 and r.json() == {"count": 4}
        for params in ({"search": "amount~1"}, {"cursor": "garbage"}, {"status": "bogus"},
                       {"started_after": "yesterday"}):
            assert api.get("/workflows", params=params, headers=ro).status_code == 400, params
        assert api.get("/workflows/count", params={"status": "bogus"}, headers=ro).status_code == 400
        batch = {"action": "signal", "search": {"customer": "c-1"}, "signal": "poke", "args": ["http"]}
        assert api.post("/workflows/batch", json=batch, headers=ro).status_code == 403
        assert api.post("/workflows/batch", json=batch).status_code == 401
        r = api.post("/workflows/batch", json=batch, headers=rw)
        assert r.status_code == 200 and r.json()["count"] == 3
        r = api.post("/workflows/batch", json={"action": "suspend"}, headers=rw)
        assert r.status_code == 400 and "suspend" in r.json()["message"]
        r = api.post("/workflows/batch", json={"action": "cancel", "search": {"amount": ["~", 1]}}, headers=rw)
        assert r.status_code == 400
        r = api.post("/workflows", json={"type": "search.Idle", "id": "http-1", "search": {"bad": [1]}}, headers=rw)
        assert r.status_code == 400 and "'bad'" in r.json()["message"]
