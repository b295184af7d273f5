"""The HTTP API and the webhooks, through Starlette's TestClient, against a real node, projector and client."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

from actors import Client, Workflow, activity, query, update, workflow
from actors import signal as signal_handler
from actors.interfaces import http
from actors.interfaces.http import ApiTokens, bind, create_app, is_loopback, openapi_document, server
from actors.interfaces.webhooks import BadArguments, WebhookAuth, arguments, sign, signed_headers, webhook
from tests.processes import wait_until
from tests.stack import module_stack

with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2; httpx is what the project installs
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "t0ken-for-tests"
SECRET = "s3cret-for-tests"
RW, RO = "rw-t0ken-for-tests", "ro-t0ken-for-tests"
API_TOKENS = f"admin:{RW},ro:viewer:{RO}"


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
    with module_stack(kafka_server, pg_server, tmp_path_factory.mktemp("node"), "http") as c:
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
    # A start needs only Kafka: its row reaches PostgreSQL a moment later, so page once all three are there.
    wait_until(lambda: api.get("/workflows/count", params={"type": kind}).json()["count"] == 3, 20, "3 rows")
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
    # docs/API.md §14 (was: answered with an empty list): an unknown status is refused
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
    """docs/API.md §14: an operation that did nothing says so."""
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
        for r in (tc.get("/workflows"), tc.get("/workflows/x")):
            assert r.status_code == 503 and error_of(r) == "Unavailable"
        # The signal goes out unchecked (commands need only Kafka) and meets a namespace without topics:
        # a setup problem, named as such rather than as an outage.
        r = tc.post("/workflows/x/signal/s")
        assert r.status_code == 503 and error_of(r) == "NotConfigured" and "metamorph init" in r.json()["message"]
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
    """POST the two webhooks (``headers`` a dict or a function of the raw body and the request target);
    returns the signal response."""
    order = {"order_id": f"W-{uuid.uuid4().hex[:4]}", "amount": 3}
    raw = json.dumps(order).encode()
    target = "/webhooks/start/http.Order"
    h = headers(raw, target) if callable(headers) else headers or {}
    r = tc.post(target, content=raw, headers={"content-type": "application/json", **h})
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    wait_status(tc, wid, "waiting")
    raw = json.dumps({"by": "hook"}).encode()
    target = f"/webhooks/signal/http.Order/{wid}/approve"
    h = headers(raw, target) if callable(headers) else headers or {}
    return tc.post(target, content=raw, headers=h), wid


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
        r, _ = _start_and_signal(tc, lambda raw, target: signed_headers(raw, SECRET, target))
        assert r.status_code == 202
        now = str(int(time.time()))

        def upper(raw: bytes, target: str) -> dict:
            return {"X-Metamorph-Timestamp": now, "X-Signature": sign(raw, SECRET, now, target).upper()}

        r, _ = _start_and_signal(tc, upper)  # no sha256= prefix, upper-case hex
        assert r.status_code == 202
        raw, target = b'{"order_id": "S"}', "/webhooks/start/http.Order"
        for headers in (
            {},
            signed_headers(raw, "wrong", target),
            signed_headers(raw + b" ", SECRET, target),
            {"X-Metamorph-Timestamp": now, "X-Signature": "zz"},
        ):
            r = tc.post(target, content=raw, headers=headers)
            assert r.status_code == 401 and error_of(r) == "Unauthorized", headers
        r = tc.post("/webhooks/nope", content=raw, headers=signed_headers(raw, SECRET, "/webhooks/nope"))
        assert r.status_code == 404


def test_webhook_signatures_expire_cover_the_target_and_are_not_replayable(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signature over the body alone could be replayed forever and on any route: the timestamp, the
    request target and a memory of accepted signatures close those holes."""
    monkeypatch.delenv("METAMORPH_WEBHOOK_TOLERANCE", raising=False)
    with TestClient(create_app(client, webhook_auth="signature", webhook_secret=SECRET)) as tc:
        raw = json.dumps({"order_id": "R", "amount": 2}).encode()
        target = "/webhooks/start/http.Order"
        post = tc.post
        assert (
            post(target, content=raw, headers={"X-Signature": sign(raw, SECRET, "", target)}).status_code
            == 401
        )
        for skew in (-301, 301):  # outside the ±300 s window
            h = signed_headers(raw, SECRET, target, now=time.time() + skew)
            assert post(target, content=raw, headers=h).status_code == 401, skew
        wid = f"signed-{uuid.uuid4().hex[:6]}"
        h = signed_headers(raw, SECRET, f"{target}?id=other")  # signed for another id
        r = post(f"{target}?id={wid}", content=raw, headers=h)
        assert r.status_code == 401 and error_of(r) == "Unauthorized"
        h = signed_headers(raw, SECRET, f"{target}?id={wid}", now=time.time() - 200)  # late but in the window
        assert post(f"{target}?id={wid}", content=raw, headers=h).status_code == 201
        r = post(f"{target}?id={wid}", content=raw, headers=h)  # the same request again
        assert r.status_code == 401 and error_of(r) == "Unauthorized"
        wait_status(tc, wid, "waiting")
        body = json.dumps({"by": "signed"}).encode()
        h = signed_headers(body, SECRET, f"/webhooks/signal/http.Order/{wid}/approve")
        assert post(f"/webhooks/signal/http.Fails/{wid}/approve", content=body, headers=h).status_code == 401
        assert post(f"/webhooks/signal/http.Order/{wid}/approve", content=body, headers=h).status_code == 202


def test_request_bodies_are_bounded_before_credentials_are_checked(client: Client) -> None:
    app = create_app(client, webhook_auth="token", webhook_token=TOKEN, api_tokens=API_TOKENS, max_body=2000)
    big = json.dumps({"type": "http.Order", "args": ["x" * 3000]}).encode()
    with TestClient(app) as tc:
        for path in ("/workflows", "/webhooks/start/http.Order", "/workflows/x/signal/approve"):
            r = tc.post(path, content=big)  # no credentials at all: still 413, nothing was read
            assert r.status_code == 413 and error_of(r) == "PayloadTooLarge", path
            assert tc.post(path, content=b"{}").status_code == 401, path
        chunked = tc.post(  # no Content-Length: counted while it is read
            "/webhooks/start/http.Order",
            content=iter([big[:1500], big[1500:]]),
            headers={"X-Metamorph-Token": TOKEN},
        )
        assert chunked.status_code == 413 and error_of(chunked) == "PayloadTooLarge"
        r = tc.post("/workflows", content=big[:1900], headers={"Authorization": f"Bearer {RW}"})
        assert r.status_code == 400  # under the limit: read, and refused as bad JSON


# -- authentication of the API ---------------------------------------------------------------------------
def test_api_tokens_parse() -> None:
    tokens = ApiTokens.parse(" admin:a:b , ro:viewer:v ")
    assert [(t.name, t.secret, t.read_only) for t in tokens.tokens] == [
        ("admin", b"a:b", False),
        ("viewer", b"v", True),
    ]
    assert not ApiTokens.parse("") and not ApiTokens.parse(None)
    for bad in ("justatoken", "name:", ":token", "ro:viewer", "a:x,a:y"):
        with pytest.raises(ValueError):
            ApiTokens.parse(bad)
    assert tokens.find("a:b").name == "admin" and tokens.find("v").read_only and tokens.find("a") is None


def test_api_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = http.hmac.compare_digest
    monkeypatch.setattr(http.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    tokens = ApiTokens.parse("a:1,b:2,c:3")
    assert tokens.find("1").name == "a" and len(calls) == 3  # no early exit on the first match


def test_api_token_matrix(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAMORPH_API_TOKENS", API_TOKENS)  # read by create_app, as `serve` does
    rw, ro = {"Authorization": f"Bearer {RW}"}, {"Authorization": f"Bearer {RO}"}
    with TestClient(create_app(client, webhook_auth="none"), raise_server_exceptions=False) as tc:
        for path in ("/", "/ui.js", "/ui.css", "/healthz", "/openapi.json"):
            assert tc.get(path).status_code == 200, path
        wid = tc.post("/workflows", json={"type": "http.Order", "args": ["M"]}, headers=rw).json()["id"]
        wait_status(_Authed(tc, rw), wid, "waiting")
        calls = [
            ("GET", "/workflows", None),
            ("GET", f"/workflows/{wid}", None),
            ("GET", f"/workflows/{wid}/history", None),
            ("POST", f"/workflows/{wid}/query/state", {}),
            ("POST", "/workflows", {"type": "http.Order", "args": ["M2"]}),
            ("POST", f"/workflows/{wid}/update/note", {"args": ["n"]}),
            ("POST", f"/workflows/{wid}/retry", {}),
            ("POST", f"/workflows/{wid}/terminate", {"reason": "matrix"}),
            ("POST", f"/workflows/{wid}/cancel", {}),
            ("POST", f"/workflows/{wid}/signal/internal", {}),  # last: it would complete the workflow
            ("GET", "/nope", None),
        ]
        anonymous = (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {RW[:-1]}"},
            {"Authorization": RW},
            {"Authorization": f"Basic {RW}"},
            {"X-Metamorph-Token": RW},
        )
        for method, path, body in calls:
            for headers in anonymous:
                r = tc.request(method, path, json=body, headers=headers)
                assert r.status_code == 401 and error_of(r) == "Unauthorized", (method, path, headers)
                assert r.headers["www-authenticate"].startswith("Bearer")
            r = tc.request(method, path, json=body, headers=ro)
            reads = method == "GET" or "/query/" in path
            if reads:
                assert r.status_code in (200, 404), (method, path, r.text)
            else:
                assert r.status_code == 403 and error_of(r) == "Forbidden", (method, path)
        for method, path, body in calls[:-1]:
            r = tc.request(method, path, json=body, headers=rw)
            assert r.status_code in (200, 201, 202, 409), (method, path, r.text)  # 409: retry, not failed
        assert wait_status(_Authed(tc, rw), wid, "terminated")["error_message"] == "matrix"
        r = tc.post("/webhooks/start/http.Order", json={"order_id": "no API token"})  # webhooks: own auth
        assert r.status_code == 201


class _Authed:
    """A TestClient that sends a header on every GET (for wait_status)."""

    def __init__(self, tc: TestClient, headers: dict) -> None:
        self.tc, self.headers = tc, headers

    def get(self, url: str) -> httpx.Response:
        return self.tc.get(url, headers=self.headers)


def test_serve_warns_when_reachable_without_tokens(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("::")
    cases = [("0.0.0.0", "", True), ("0.0.0.0", API_TOKENS, False), ("127.0.0.1", "", False)]
    for host, tokens, warns in cases:
        caplog.clear()
        sock = bind(host, 0)
        try:
            with caplog.at_level(logging.WARNING, logger="actors.interfaces.http"):
                server(create_app(client, webhook_auth="none", api_tokens=tokens), sock)
        finally:
            sock.close()
        warned = any("without authentication" in rec.getMessage() for rec in caplog.records)
        assert warned == warns, (host, tokens)


# -- ids with any character ------------------------------------------------------------------------------
HOSTILE_IDS = [
    "a/b",
    "a/b/cancel",
    "tenant/7/history",
    "q?x=1&y=2#frag",
    "x');document.title='PWNED';('",
    "<img src=x onerror=document.title='PWNED'>",
    '</script>"quoted" 100% done',
    "sp ace/ünï/∂",
    "//lead//trail/",
]


def test_ids_with_any_character_are_addressable(api: TestClient) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = [f"{tag}-{i}" if i.startswith("/") else f"{i}-{tag}" for i in HOSTILE_IDS]
    for wid in ids:
        r = api.post("/workflows", json={"type": "http.Order", "args": [wid], "id": wid})
        assert r.status_code == 201 and r.json()["id"] == wid
        assert r.headers["location"] == "/workflows/" + quote(wid, safe="")
    for wid in ids:
        enc = quote(wid, safe="")
        detail = wait_status(api, enc, "waiting")
        assert detail["id"] == wid and detail["input"] == [wid]
        assert api.get(f"/workflows/{enc}/history").json()["id"] == wid
        r = api.post(f"/workflows/{enc}/update/note", json={"args": [wid]})
        assert (r.status_code, r.json()) == (200, {"id": wid, "result": 1})
        r = api.post(f"/workflows/{enc}/query/state")
        assert r.json() == {"id": wid, "result": {"approved_by": None, "notes": [wid]}}
    # "a/b/cancel-…" is one id: reading it must not cancel "a/b" (the routes match the encoded path)
    a_b, a_b_cancel = ids[0], ids[1]
    assert api.get("/workflows/" + quote(a_b_cancel, safe="")).json()["status"] == "waiting"
    assert api.get("/workflows/" + quote(a_b, safe="")).json()["status"] == "waiting"
    # an unencoded "/" still works: the last known suffix ends the id
    assert api.get(f"/workflows/{a_b}").json()["id"] == a_b
    r = api.post(f"/workflows/{a_b}/signal/approve", json={"args": ["slash"]})
    assert (r.status_code, r.json()) == (202, {"id": a_b, "signal": "approve"})
    assert wait_status(api, quote(a_b, safe=""), "completed")["output"]["approved_by"] == "slash"
    r = api.post(f"/webhooks/signal/http.Order/{quote(a_b_cancel, safe='')}/approve", json={"by": "hook"})
    assert r.status_code == 202 and r.json()["id"] == a_b_cancel
    for wid in ids[2:]:
        assert api.post(f"/workflows/{quote(wid, safe='')}/cancel").json() == {
            "id": wid,
            "requested": "cancel",
        }
    for wid in ids[2:]:
        wait_status(api, quote(wid, safe=""), "cancelled")
    assert count("/workflows/{id}/cancel", 202) >= len(ids) - 2  # metrics keep the route template


def test_the_dashboard_page_is_served(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>Metamorph</title>" in page.text and "/workflows?" in page.text


def test_the_dashboard_has_a_csp_and_builds_no_html_from_data(api: TestClient) -> None:
    """The UI's safety rests on the page never parsing data as HTML and the CSP forbidding inline script."""
    page = api.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), "inline script"
    assert not re.search(r"\son[a-z]+\s*=", page.text), "inline event handler"
    script = api.get("/ui.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script.text, sink
    assert (
        "Authorization" in script.text
        and "sessionStorage" in script.text
        and "document.cookie" not in script.text
    )
    assert api.get("/ui.css").headers["content-type"].startswith("text/css")


def test_the_compose_example_publishes_the_api_only_with_tokens() -> None:
    import yaml

    from actors.interfaces.cli import _parser

    compose = yaml.safe_load((Path(__file__).parent.parent / "ops" / "docker-compose.yml").read_text())
    server_service = compose["services"]["server"]
    assert "0.0.0.0" in server_service["command"] and server_service["ports"]
    assert server_service["environment"]["METAMORPH_API_TOKENS"].startswith("${METAMORPH_API_TOKENS:?")
    assert _parser().parse_args(["serve"]).host == "127.0.0.1"  # loopback unless --host says otherwise


# -- the typed API: generated document, validation, §6–§11 ----------------------------------------------
def test_openapi_is_generated_from_the_typed_models() -> None:
    """No hand-written document: FastAPI generates it from the models; errors are ErrorBody, never 422."""
    assert not hasattr(http, "_schemas") and not hasattr(http, "_op")
    doc = openapi_document()
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (path, method)
            for code, response in op["responses"].items():
                if code[0] in "45":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, code)
            if path.startswith(("/workflows", "/schedules", "/replay")):
                assert {"apiToken": []} in op["security"] and "401" in op["responses"], (path, method)
    options = set(schemas["StartRequest"]["properties"])
    assert {"if_running", "if_closed", "start_signal", "start_signal_args", "start_delay", "timeout", "search",
            "memo", "priority"} <= options
    assert "timed_out" in schemas["Status"]["enum"]  # the hand-written enum had forgotten it
    assert "force" in schemas["RetryRequest"]["properties"]
    acting = doc["paths"]["/workflows/{id}/terminate"]["post"]["responses"]
    reading = doc["paths"]["/workflows/{id}/query/{name}"]["post"]["responses"]
    assert "403" in acting and "403" not in reading  # a query is a read, though it is a POST


def test_bad_requests_are_400_naming_the_field(api: TestClient) -> None:
    for body, field in (
        ({"type": "x", "if_runing": "fail"}, "if_runing"),  # a typo is refused, not ignored
        ({"type": "x", "priority": 10}, "priority"),
        ({"type": "x", "priority": True}, "priority"),
        ({"type": "x", "start_delay": "5"}, "start_delay"),
        ({"type": "x", "if_closed": "sometimes"}, "if_closed"),
        ({"type": "x", "search": {"k": [1]}}, "search"),
        ({"type": "x", "memo": []}, "memo"),
        ({"type": ""}, "type"),
    ):
        r = api.post("/workflows", json=body)
        assert r.status_code == 400 and error_of(r) == "BadRequest" and field in r.json()["message"], (body, r.text)
    r = api.post("/workflows", content=b'{"type": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["message"]
    r = api.post("/workflows/x/reset", json={"seq": "3"})
    assert r.status_code == 400 and "seq" in r.json()["message"]
    r = api.post("/workflows/x/reset", json={})
    assert r.status_code == 400 and '"seq" is required' in r.json()["message"]
    for params in ({"started_after": "yesterday"}, {"cursor": "not-a-cursor"}, {"cursor": "x", "offset": 2},
                   {"search": "noop"}):
        r = api.get("/workflows", params=params)
        assert r.status_code == 400 and error_of(r) == "BadRequest", (params, r.text)
    r = api.post("/workflows/batch", json={"action": "explode"})
    assert r.status_code == 400 and "action" in r.json()["message"]


def test_start_options_list_filters_cursor_count_and_batch(api: TestClient) -> None:
    tag = uuid.uuid4().hex[:8]
    wid, other = f"opt-{tag}", f"opt2-{tag}"
    body = {"type": "http.Order", "args": ["O-1", 5], "id": wid, "if_running": "fail", "if_closed": "allow",
            "start_signal": "approve", "start_signal_args": ["early"], "start_delay": 0, "timeout": 120,
            "search": {"customer": f"c-{tag}", "amount": 250}, "memo": {"note": "<b>memo</b>"}, "priority": 1}
    r = api.post("/workflows", json=body)
    assert r.status_code == 201 and r.json()["id"] == wid, r.text
    done = wait_status(api, wid, "completed")  # the start signal approved it before its first step
    assert done["output"]["approved_by"] == "early"
    assert done["search"]["customer"] == f"c-{tag}" and done["memo"] == {"note": "<b>memo</b>"}
    r = api.post("/workflows", json={**body, "if_closed": "fail"})
    assert (r.status_code, error_of(r)) == (409, "WorkflowAlreadyStarted")
    api.post("/workflows", json={"type": "http.Order", "args": ["O-2"], "id": other,
                                 "search": {"customer": f"c-{tag}", "amount": 50}})
    wait_status(api, other, "waiting")
    mine = ("search", f"customer=c-{tag}")
    page = api.get("/workflows", params=[mine, ("search", "amount>100")]).json()
    assert [w["id"] for w in page["workflows"]] == [wid]
    assert api.get("/workflows/count", params=[mine]).json() == {"count": 2}
    first = api.get("/workflows", params=[mine, ("limit", 1)]).json()
    second = api.get("/workflows", params=[mine, ("limit", 1), ("cursor", first["next_cursor"])]).json()
    assert {w["id"] for w in first["workflows"] + second["workflows"]} == {wid, other}
    assert first["next_cursor"] and second["next_cursor"] is None
    future = "2999-01-01T00:00:00+00:00"
    assert api.get("/workflows/count", params=[mine, ("started_after", future)]).json() == {"count": 0}
    assert api.get("/workflows/count", params=[mine, ("started_before", future)]).json() == {"count": 2}
    assert api.get("/workflows/count", params=[mine, ("status", "waiting")]).json() == {"count": 1}
    r = api.post("/workflows/batch", json={"action": "terminate", "search": {"customer": f"c-{tag}"}, "reason": "batch"})
    assert r.json() == {"action": "terminate", "count": 1}  # the completed one is not acted on
    assert wait_status(api, other, "terminated")["error_message"] == "batch"


def test_update_with_start(api: TestClient) -> None:
    wid = f"uws/{uuid.uuid4().hex[:8]}"
    body = {"type": "http.Order", "args": ["U-1"], "id": wid, "update": "note", "update_args": ["hi"]}
    r = api.post("/workflows/update-with-start", json=body)
    assert (r.status_code, r.json()) == (200, {"id": wid, "result": 1}), r.text
    assert r.headers["location"] == "/workflows/" + quote(wid, safe="")
    r = api.post("/workflows/update-with-start", json={**body, "update_args": ["again"]})  # the open run
    assert r.json() == {"id": wid, "result": 2}
    r = api.post("/workflows/update-with-start", json={**body, "if_running": "fail"})
    assert (r.status_code, error_of(r)) == (409, "WorkflowAlreadyStarted")
    for bad in ({k: v for k, v in body.items() if k != "update"}, {k: v for k, v in body.items() if k != "id"},
                {**body, "timeout": 5}):
        r = api.post("/workflows/update-with-start", json=bad)
        assert r.status_code == 400 and error_of(r) == "BadRequest"
    api.post(f"/workflows/{quote(wid, safe='')}/terminate", json={"reason": "done"})


def test_retry_passes_force_only_to_a_client_that_supports_it(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.client import sync as client_module

    seen: list[tuple[str, Any]] = []

    def with_force(self: Any, force: bool = False) -> None:
        seen.append((self.id, force))

    monkeypatch.setattr(client_module.WorkflowHandle, "retry", with_force)
    r = api.post("/workflows/saga%2F1/retry", json={"force": True})
    assert (r.status_code, r.json()) == (202, {"id": "saga/1", "requested": "retry"})
    assert api.post("/workflows/saga%2F1/retry").status_code == 202
    assert seen == [("saga/1", True), ("saga/1", False)]

    def without_force(self: Any) -> None:
        seen.append((self.id, None))

    monkeypatch.setattr(client_module.WorkflowHandle, "retry", without_force)
    r = api.post("/workflows/saga/retry", json={"force": True})
    assert r.status_code == 400 and "force" in r.json()["message"]
    assert api.post("/workflows/saga/retry", json={"force": "yes"}).status_code == 400
    assert api.post("/workflows/saga/retry", json={"force": False}).status_code == 202
    assert seen[-1] == ("saga", None)


def test_replay_of_a_stored_history_reports_nondeterminism(api: TestClient) -> None:
    wid = api.post("/workflows", json={"type": "http.Order", "args": ["R-1"]}).json()["id"]
    wait_status(api, wid, "waiting")
    api.post(f"/workflows/{wid}/signal/approve", json={"args": ["replayer"]})
    wait_status(api, wid, "completed")
    events = api.get(f"/workflows/{wid}/history").json()["events"]
    for body in (events, {"events": events}):
        r = api.post("/replay", json=body)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["deterministic"] is True and report["status"] == "completed", report
        assert (report["workflow_id"], report["workflow_type"], report["events"]) == (wid, "http.Order", len(events))
    stored = api.get(f"/workflows/{quote(wid, safe='')}/replay").json()  # the stored history, server-side
    assert stored["deterministic"] is True and stored["events"] == len(events), stored
    # The same history replayed as another type's code: it schedules http.explode where http.charge was recorded.
    changed = [{**e, "workflow_type": "http.Fails"} if e["type"] == "WorkflowStarted" else e for e in events]
    report = api.post("/replay", json=changed).json()
    assert report["deterministic"] is False and report["status"] is None, report
    finding = report["nondeterminism"]
    assert isinstance(finding["seq"], int) and "http.charge" in str(finding["recorded"]) + finding["message"]
    unknown = [{**e, "workflow_type": "no.such.Type"} if e["type"] == "WorkflowStarted" else e for e in events]
    r = api.post("/replay", json=unknown)
    assert (r.status_code, error_of(r)) == (404, "UnknownWorkflowType")
    for bad in ([], {"events": "x"}, [{"seq": 1}], "text"):
        r = api.post("/replay", json=bad)
        assert r.status_code == 400 and error_of(r) == "BadRequest", (bad, r.text)


def test_raw_starlette_routes_are_documented_and_guarded(client: Client) -> None:
    """The slot for GET /workflows/{id}/stream (a raw Starlette endpoint, text/event-stream)."""
    from starlette.responses import Response
    from starlette.routing import Route

    from actors.interfaces.routing import IdRoute

    async def stream(request: Any) -> Response:
        return Response(f"data: {json.dumps(request.path_params['id'])}\n\n", media_type="text/event-stream")

    app = create_app(client, webhook_auth="none", api_tokens=API_TOKENS,
                     raw_routes=[IdRoute("/workflows/{id}/stream", stream, methods=["GET"])])
    doc = app.openapi()
    validate(doc)
    op = doc["paths"]["/workflows/{id}/stream"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"] and "401" in op["responses"]
    served = openapi_document()["paths"]["/workflows/{id}/stream"]["get"]  # the real SSE route (stream_http)
    assert "text/event-stream" in served["responses"]["200"]["content"] and "400" in served["responses"]
    with TestClient(app) as tc:
        r = tc.get("/workflows/a%2Fb%2Fstream/stream", headers={"Authorization": f"Bearer {RO}"})
        assert r.status_code == 200 and r.text == 'data: "a/b/stream"\n\n'  # before "/workflows/{id}"
        assert tc.get("/workflows/a/stream").status_code == 401
    with pytest.raises(RuntimeError, match="not documented"):
        create_app(client, webhook_auth="none", raw_routes=[Route("/workflows/x/other", stream, methods=["GET"])])


def test_one_error_table_for_http_and_cli() -> None:
    """A status the API answers and the exit status the CLI gives come from the same row."""
    from actors.errors import NotConfigured, NotRetryable, WorkflowNotFound, WorkflowNotRunning, classify
    from actors.interfaces.cli import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, _classify

    for exc, status, code in (
        (WorkflowNotFound("w"), 404, EXIT_NOT_FOUND),
        (WorkflowNotRunning("w", "completed"), 409, EXIT_REFUSED),
        (NotRetryable("not failed"), 409, EXIT_REFUSED),
        (ConnectionError("down"), 503, EXIT_UNREACHABLE),
        (NotConfigured("no METAMORPH_POSTGRES"), 503, EXIT_USAGE),
    ):
        assert (classify(exc).status, classify(exc).exit_code, _classify(exc)[0]) == (status, code, code)
    assert classify(NotConfigured("x")).error == "NotConfigured"  # not "Unavailable": nothing to wait out
    with Client("127.0.0.1:9", None, "nowhere") as unconfigured, pytest.raises(NotConfigured, match="METAMORPH_POSTGRES"):
        unconfigured.list()


def test_schedules_over_http(client: Client) -> None:
    rw, ro = {"Authorization": f"Bearer {RW}"}, {"Authorization": f"Bearer {RO}"}
    sid = f"sched-{uuid.uuid4().hex[:8]}"
    body = {"id": sid, "type": "http.Order", "args": ["S"], "every": 3600, "paused": True}
    with TestClient(create_app(client, webhook_auth="none", api_tokens=API_TOKENS), raise_server_exceptions=False) as tc:
        assert tc.post("/schedules", json=body, headers=ro).status_code == 403
        r = tc.post("/schedules", json=body, headers=rw)
        assert r.status_code == 201, r.text
        info = r.json()
        assert info["id"] == sid and info["paused"] is True and len(info["next_runs"]) == 5
        assert tc.get(f"/schedules/{sid}", headers=ro).json()["spec"]["every"] == 3600
        assert sid in [s["id"] for s in tc.get("/schedules", headers=ro).json()["schedules"]]
        r = tc.post(f"/schedules/{sid}/resume", headers=rw)
        assert r.json() == {"id": sid, "action": "resume", "result": None}
        assert tc.get(f"/schedules/{sid}", headers=ro).json()["paused"] is False
        r = tc.post(f"/schedules/{sid}/trigger", headers=rw)
        assert r.status_code == 200 and r.json()["result"].startswith(f"{sid}@"), r.text
        r = tc.post(f"/schedules/{sid}/backfill", json={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T02:30:00Z"},
                    headers=rw)
        assert r.status_code == 200 and r.json()["result"] in (2, 3), r.text  # hourly times in 2.5 h
        r = tc.post(f"/schedules/{sid}/pause", json={"note": "maintenance"}, headers=rw)
        assert r.status_code == 200 and tc.get(f"/schedules/{sid}", headers=ro).json()["paused"] is True
        assert tc.post(f"/schedules/{sid}/pause", json={}, headers=ro).status_code == 403
        for bad in ({**body, "cron": "0 2 * * *"}, {**body, "colour": "red"}, {**body, "every": 0.5},
                    {**body, "overlap": "sometimes"}):
            r = tc.post("/schedules", json=bad, headers=rw)
            assert r.status_code == 400 and error_of(r) == "BadRequest", (bad, r.text)
        r = tc.post(f"/schedules/{sid}/backfill", json={"start": "soon"}, headers=rw)
        assert r.status_code == 400 and error_of(r) == "BadRequest"
        r = tc.delete(f"/schedules/{sid}", headers=rw)
        assert r.json() == {"id": sid, "action": "delete", "result": True}
        deadline = time.monotonic() + 20  # the list reads the projection, which follows the delete shortly
        while sid in [s["id"] for s in tc.get("/schedules", headers=ro).json()["schedules"]]:
            assert time.monotonic() < deadline, "a deleted schedule is still listed"
            time.sleep(0.2)


# -- last: property-based calls of every documented operation (they start, signal and batch-terminate at random)
SCHEMATHESIS_EXAMPLES = 4  # per operation; ~35 operations keep the test well under a minute


def test_schemathesis_exercises_every_route_against_a_live_server(client: Client) -> None:
    """Every operation of the generated document, called on a real uvicorn with a token: no 5xx, only
    documented statuses, bodies and content types that conform to the document."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    sock = bind("127.0.0.1", 0)
    srv = server(create_app(client, webhook_auth="none", api_tokens=API_TOKENS), sock)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        deadline = time.monotonic() + 10
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        paths = httpx.get(url + "/openapi.json").json()["paths"]
        documented = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
        # Every operation but the document itself (schemathesis skips it: loading the schema was that call).
        assert {op.label for op in operations} == documented - {"GET /openapi.json"} and len(documented) >= 30
        auth = {"Authorization": f"Bearer {RW}"}
        failures: list[str] = []
        began = time.monotonic()
        for operation in operations:

            @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def call(case: Any) -> None:
                if isinstance(case.body, dict) and "/{name}" in case.path:
                    case.body["timeout"] = 1  # a query of a workflow no node runs waits for its timeout
                case.call_and_validate(base_url=url, headers=auth, checks=checks)

            try:
                call()
            except Exception as exc:  # collect them all: one report names every failing operation
                failures.append(f"{operation.label}: {str(exc)[:1500]}")
        assert not failures, "\n\n".join(failures)
        assert time.monotonic() - began < 90
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
