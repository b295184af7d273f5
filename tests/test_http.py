"""The HTTP API and the webhooks, through Starlette's TestClient, against a real node, projector and client."""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

from actors import Client, Workflow, activity, query, update, workflow
from actors import signal as signal_handler
from actors.http import bind, create_app, openapi_document, server
from actors.webhooks import BadArguments, WebhookAuth, arguments, sign, webhook
from tests.stack import running_stack

with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2; httpx is what the project installs
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "t0ken-for-tests"
SECRET = "s3cret-for-tests"


# -- the app under test ----------------------------------------------------------------------------------
@activity(name="http.charge")
def charge(order_id: str, amount: int) -> str:
    return f"receipt-{order_id}-{amount}"


@activity(name="http.explode", tries=1)
def explode(message: str) -> None:
    raise RuntimeError(message)


@webhook
class HttpOrder(Workflow):
    name = "http.Order"

    def __init__(self) -> None:
        self.approved_by: str | None = None
        self.notes: list[str] = []

    async def execute(self, order_id: str, amount: int = 1, note: str = "") -> dict:
        receipt = await workflow.activity(charge, order_id, amount)
        await workflow.wait(lambda: self.approved_by is not None)
        return {"receipt": receipt, "approved_by": self.approved_by, "note": note, "notes": self.notes}

    @webhook
    @signal_handler
    def approve(self, by: str) -> None:
        self.approved_by = by

    @signal_handler
    def internal(self) -> None:  # a signal, but not exposed as a webhook
        self.approved_by = "internal"

    @query
    def state(self) -> dict:
        return {"approved_by": self.approved_by, "notes": self.notes}

    @update
    def note(self, text: str) -> int:
        self.notes.append(text)
        return len(self.notes)


class HttpFails(Workflow):  # not a webhook
    name = "http.Fails"

    async def execute(self, message: str) -> None:
        await workflow.activity(explode, message)


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(kafka_server, pg_server, tmp_path_factory) -> Iterator[Client]:
    """One node, one projector and one Client for the module."""
    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path_factory.mktemp("node"), prefix="http") as (c, _node, _ns):
        yield c


@pytest.fixture(scope="module")
def api(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client, webhook_auth="none"), raise_server_exceptions=False) as tc:
        yield tc


def wait_status(api: TestClient, workflow_id: str, wanted: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.get(f"/workflows/{workflow_id}")
        if r.status_code == 200 and r.json()["status"] == wanted:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"{workflow_id} never reached {wanted}: {r.status_code} {r.text[:300]}")


def count(route: str, status: int) -> float:
    labels = {"route": route, "status": str(status)}
    return REGISTRY.get_sample_value("metamorph_http_requests_total", labels) or 0.0


def error_of(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error", "message"} and body["message"], body
    return body["error"]


# -- the API ---------------------------------------------------------------------------------------------
def test_healthz_openapi_and_unknown_routes(api: TestClient) -> None:
    assert api.get("/healthz").json()["status"] == "ok"
    doc = api.get("/openapi.json").json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (route.path, method) for route in api.app.routes for method in route.methods or () if method != "HEAD"
    }
    assert served == documented
    r = api.get("/nope")
    assert r.status_code == 404 and error_of(r) == "NotFound"
    r = api.delete("/workflows")
    assert r.status_code == 405 and error_of(r) == "MethodNotAllowed"


def test_start_get_signal_query_update_and_history(api: TestClient) -> None:
    before = count("/workflows/{id}", 200)
    r = api.post("/workflows", json={"type": "http.Order", "args": ["A-1", 7]})
    assert r.status_code == 201 and r.headers["location"] == f"/workflows/{r.json()['id']}"
    wid = r.json()["id"]
    detail = wait_status(api, wid, "waiting")
    assert detail["type"] == "http.Order" and detail["input"] == ["A-1", 7]
    assert {"history", "activities", "exceptions", "children", "runs", "signals"} <= set(detail)
    assert [a["name"] for a in detail["activities"]] == ["http.charge"] and len(detail["runs"]) == 1
    assert count("/workflows/{id}", 200) > before

    r = api.post(f"/workflows/{wid}/update/note", json={"args": ["first"]})
    assert (r.status_code, r.json()) == (200, {"id": wid, "result": 1})
    r = api.post(f"/workflows/{wid}/query/state", json={"timeout": 5})
    assert r.json()["result"] == {"approved_by": None, "notes": ["first"]}
    r = api.post(f"/workflows/{wid}/signal/approve", json={"args": ["alice"]})
    assert (r.status_code, r.json()) == (202, {"id": wid, "signal": "approve"})
    done = wait_status(api, wid, "completed")
    assert done["output"] == {
        "receipt": "receipt-A-1-7",
        "approved_by": "alice",
        "note": "",
        "notes": ["first"],
    }
    assert [s["name"] for s in done["signals"]] == ["approve"]

    events = api.get(f"/workflows/{wid}/history").json()["events"]
    assert events[0]["type"] == "WorkflowStarted" and events[-1]["type"] == "WorkflowCompleted"
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_list_is_paginated_and_filtered(api: TestClient) -> None:
    kind = f"http.Unknown{uuid.uuid4().hex[:6]}"  # no node runs it: the rows stay as the client wrote them
    ids = {
        api.post("/workflows", json={"type": kind, "args": [i], "id": f"{kind}-{i}"}).json()["id"]
        for i in range(3)
    }
    first = api.get("/workflows", params={"type": kind, "limit": 2}).json()
    assert (
        first["limit"] == 2
        and first["offset"] == 0
        and first["next_offset"] == 2
        and len(first["workflows"]) == 2
    )
    rest = api.get("/workflows", params={"type": kind, "limit": 2, "offset": 2}).json()
    assert rest["next_offset"] is None and len(rest["workflows"]) == 1
    assert {w["id"] for w in first["workflows"] + rest["workflows"]} == ids
    assert all(w["type"] == kind for w in first["workflows"])
    # API.md §14 (was: answered with an empty list): an unknown status is refused
    for bad in ({"status": "no-such-status"}, {"limit": "x"}, {"limit": 0}, {"limit": 100000}, {"offset": -1}):
        r = api.get("/workflows", params=bad)
        assert r.status_code == 400 and error_of(r) == "BadRequest"


def test_errors_are_json_with_the_right_status(api: TestClient) -> None:
    for method, path in (
        ("GET", "/workflows/missing"),
        ("GET", "/workflows/missing/history"),
        ("POST", "/workflows/missing/signal/approve"),
        ("POST", "/workflows/missing/query/state"),
        ("POST", "/workflows/missing/update/note"),
        ("POST", "/workflows/missing/cancel"),
        ("POST", "/workflows/missing/terminate"),
        ("POST", "/workflows/missing/retry"),
    ):
        r = api.request(method, path)
        assert r.status_code == 404 and error_of(r) == "WorkflowNotFound", (method, path)
    assert count("/workflows/{id}/retry", 404) >= 1

    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"args": [1]}',
        b'{"type": 5}',
        b'{"type": "x", "args": "a"}',
        b'{"type": "x", "id": 3}',
    ):
        r = api.post("/workflows", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and error_of(r) == "BadRequest", body

    wid = api.post("/workflows", json={"type": "http.Order", "args": ["E"]}).json()["id"]
    wait_status(api, wid, "waiting")
    r = api.post(f"/workflows/{wid}/query/no_such_query")
    assert r.status_code == 409 and error_of(r)
    r = api.post(f"/workflows/{wid}/query/state", json={"timeout": 0.0001})
    assert r.status_code == 504 and error_of(r) == "Timeout"
    r = api.post(f"/workflows/{wid}/query/state", json={"timeout": "soon"})
    assert r.status_code == 400
    r = api.post(f"/workflows/{wid}/signal/approve", json={"args": "x"})
    assert r.status_code == 400
    r = api.post(f"/workflows/{wid}/retry")
    assert r.status_code == 409 and error_of(r) == "NotRetryable"
    api.post(f"/workflows/{wid}/terminate", json={"reason": "done testing"})


def test_cancel_terminate_and_retry(api: TestClient) -> None:
    a = api.post("/workflows", json={"type": "http.Order", "args": ["C"]}).json()["id"]
    b = api.post(
        "/workflows", json={"type": "http.Order", "args": ["T"], "id": f"t-{uuid.uuid4().hex[:6]}"}
    ).json()["id"]
    wait_status(api, a, "waiting")
    wait_status(api, b, "waiting")
    r = api.post(f"/workflows/{a}/cancel")
    assert (r.status_code, r.json()) == (202, {"id": a, "requested": "cancel"})
    r = api.post(f"/workflows/{b}/terminate", json={"reason": "not needed"})
    assert r.status_code == 202
    assert api.post(f"/workflows/{b}/terminate", json={"reason": 5}).status_code == 400
    wait_status(api, a, "cancelled")
    assert wait_status(api, b, "terminated")["error_message"] == "not needed"

    failing = api.post("/workflows", json={"type": "http.Fails", "args": ["boom"]}).json()["id"]
    failed = wait_status(api, failing, "failed")
    assert (
        failed["error_type"] == "ActivityFailed"
        and [e["activity"] for e in failed["exceptions"]][0] == "http.explode"
    )
    assert api.post(f"/workflows/{failing}/retry").status_code == 202


def test_acting_on_an_ended_workflow_is_409_and_an_unknown_status_is_400(api: TestClient) -> None:
    """API.md §14: an operation that did nothing says so."""
    wid = api.post("/workflows", json={"type": "http.Order", "args": ["E"]}).json()["id"]
    wait_status(api, wid, "waiting")
    assert api.post(f"/workflows/{wid}/terminate", json={}).status_code == 202
    wait_status(api, wid, "terminated")
    for path, body in (("signal/approve", {"args": ["bob"]}), ("cancel", {}), ("terminate", {}),
                       ("update/note", {"args": ["x"]})):
        r = api.post(f"/workflows/{wid}/{path}", json=body)
        assert (r.status_code, error_of(r)) == (409, "WorkflowNotRunning"), path
        assert "terminated" in r.json()["message"]
    r = api.get("/workflows", params={"status": "bogus"})
    assert (r.status_code, error_of(r)) == (400, "BadRequest")
    assert "unknown status 'bogus'" in r.json()["message"]
    assert api.get("/workflows", params={"status": "terminated"}).status_code == 200


def test_unreachable_postgres_is_503(kafka: str) -> None:
    broken = Client(kafka, "postgresql://nobody@127.0.0.1:9/nothing?connect_timeout=2", "nowhere")
    with TestClient(create_app(broken, webhook_auth="none"), raise_server_exceptions=False) as tc:
        for r in (tc.get("/workflows"), tc.get("/workflows/x"), tc.post("/workflows/x/signal/s")):
            assert r.status_code == 503 and error_of(r) == "Unavailable"
    broken.close()


def test_real_uvicorn_on_a_free_port(client: Client) -> None:
    sock = bind("127.0.0.1", 0)
    srv = server(create_app(client, webhook_auth="none"), sock)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        deadline = time.monotonic() + 10
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url + "/healthz").json() == {"status": "ok", "namespace": client.namespace}
        with pytest.raises(OSError, match="cannot listen"):
            bind("127.0.0.1", sock.getsockname()[1])
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


def test_openapi_document_is_valid_on_its_own() -> None:
    validate(openapi_document())


# -- webhooks --------------------------------------------------------------------------------------------
def test_webhook_arguments_by_name_or_position() -> None:
    execute = HttpOrder.execute
    assert arguments(execute, None) == []
    assert arguments(execute, ["A", 2]) == ["A", 2]
    assert arguments(execute, {"order_id": "A"}) == ["A"]
    assert arguments(execute, {"order_id": "A", "note": "n"}) == ["A", 1, "n"]  # the gap gets its default
    with pytest.raises(BadArguments, match="missing argument 'order_id'"):
        arguments(execute, {"amount": 3})
    with pytest.raises(BadArguments, match="unknown argument"):
        arguments(execute, {"order_id": "A", "colour": "red"})
    with pytest.raises(BadArguments):
        arguments(execute, "A")


def test_webhook_auth_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("METAMORPH_WEBHOOK_AUTH", "METAMORPH_WEBHOOK_TOKEN", "METAMORPH_WEBHOOK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    assert WebhookAuth.configure().mode == "none"
    with pytest.raises(ValueError, match="needs a token"):
        WebhookAuth.configure("token")
    with pytest.raises(ValueError, match="must be one of"):
        WebhookAuth.configure("magic")
    monkeypatch.setenv("METAMORPH_WEBHOOK_SECRET", SECRET)
    assert WebhookAuth.configure() == WebhookAuth("signature", None, SECRET)
    monkeypatch.setenv("METAMORPH_WEBHOOK_AUTH", "token")
    monkeypatch.setenv("METAMORPH_WEBHOOK_TOKEN", TOKEN)
    assert WebhookAuth.configure().mode == "token"


def _start_and_signal(tc: TestClient, headers: Any = None) -> tuple[httpx.Response, str]:
    """POST the two webhooks (``headers`` a dict or a function of the raw body); returns the signal response."""
    order = {"order_id": f"W-{uuid.uuid4().hex[:4]}", "amount": 3}
    raw = json.dumps(order).encode()
    h = headers(raw) if callable(headers) else headers or {}
    r = tc.post("/webhooks/start/http.Order", content=raw, headers={"content-type": "application/json", **h})
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    wait_status(tc, wid, "waiting")
    raw = json.dumps({"by": "hook"}).encode()
    h = headers(raw) if callable(headers) else headers or {}
    return tc.post(f"/webhooks/signal/http.Order/{wid}/approve", content=raw, headers=h), wid


def test_webhooks_without_auth(api: TestClient) -> None:
    r, wid = _start_and_signal(api)
    assert (r.status_code, r.json()) == (202, {"id": wid, "signal": "approve"})
    done = wait_status(api, wid, "completed")
    assert done["output"]["approved_by"] == "hook" and done["output"]["receipt"].endswith("-3")

    r = api.post("/webhooks/start/http.Order?id=hook-fixed", json=["X", 2, "by position"])
    assert (r.status_code, r.json()) == (201, {"id": "hook-fixed", "type": "http.Order"})
    wait_status(api, "hook-fixed", "waiting")
    not_enabled = [
        "/webhooks/start/http.Fails",  # a workflow without @webhook
        "/webhooks/start/no.such.Type",
        "/webhooks/signal/http.Order/hook-fixed/internal",  # a signal without @webhook
        "/webhooks/signal/http.Order/hook-fixed/state",  # a query, not a signal
        "/webhooks/signal/http.Fails/hook-fixed/approve",  # the wrong type for that id
        "/webhooks/signal/http.Order/no-such-id/approve",
        "/webhooks/other",
    ]
    for path in not_enabled:
        r = api.post(path, json={})
        assert r.status_code == 404, path
    assert api.post("/webhooks/start/http.Order", json={"colour": "red"}).status_code == 400
    assert api.post("/webhooks/start/http.Order", content=b"{oops").status_code == 400
    assert (
        api.post("/webhooks/signal/http.Order/hook-fixed/approve", json={}).status_code == 400
    )  # `by` missing
    assert api.post("/webhooks/signal/http.Order/hook-fixed/approve", json={"by": "x"}).status_code == 202
    wait_status(api, "hook-fixed", "completed")


def test_webhooks_with_a_token(client: Client) -> None:
    with TestClient(create_app(client, webhook_auth="token", webhook_token=TOKEN)) as tc:
        r, _ = _start_and_signal(tc, {"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202
        r, _ = _start_and_signal(tc, {"X-Metamorph-Token": TOKEN})
        assert r.status_code == 202
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"X-Metamorph-Token": TOKEN[:-1]},
            {"Authorization": TOKEN},
        ):
            r = tc.post("/webhooks/start/http.Order", json={"order_id": "X"}, headers=headers)
            assert r.status_code == 401 and error_of(r) == "Unauthorized", headers
        assert (
            tc.post("/webhooks/start/no.such.Type", json={}, headers={"X-Metamorph-Token": TOKEN}).status_code
            == 404
        )
        assert (
            tc.post("/webhooks/start/no.such.Type", json={}).status_code == 401
        )  # no probing without credentials


def test_webhooks_with_a_signature(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAMORPH_WEBHOOK_AUTH", "signature")
    monkeypatch.setenv("METAMORPH_WEBHOOK_SECRET", SECRET)
    with TestClient(create_app(client)) as tc:  # configured from the environment
        r, _ = _start_and_signal(tc, lambda raw: {"X-Signature": sign(raw, SECRET)})
        assert r.status_code == 202
        r, _ = _start_and_signal(tc, lambda raw: {"X-Signature": "sha256=" + sign(raw, SECRET).upper()})
        assert r.status_code == 202
        raw = b'{"order_id": "S"}'
        for headers in (
            {},
            {"X-Signature": sign(raw, "wrong")},
            {"X-Signature": sign(raw + b" ", SECRET)},
            {"X-Signature": "zz"},
        ):
            r = tc.post("/webhooks/start/http.Order", content=raw, headers=headers)
            assert r.status_code == 401 and error_of(r) == "Unauthorized", headers
        r = tc.post("/webhooks/nope", content=raw, headers={"X-Signature": sign(raw, SECRET)})
        assert r.status_code == 404


def test_the_dashboard_page_is_served(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>Metamorph</title>" in page.text and "/workflows?" in page.text
