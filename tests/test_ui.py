"""The operator UI in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download).

Why a real browser: the UI's safety is about what a browser does with hostile ids, types and payloads
(parse them as HTML? run them as script?), which no HTTP-level test can observe. Each test asserts that
``document.title`` is still "Metamorph": every hostile string here tries to set it to "PWNED".

The README's screenshots come from ``tests/ui_screenshots.py`` (realistic data, run explicitly).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from actors import Client, Workflow, activity, query, signal, workflow
from actors.interfaces.http import bind, create_app, server
from tests.processes import wait_until
from tests.stack import module_stack

CHROMIUM = "/usr/bin/chromium"
RW, RO = "ui-rw-t0ken", "ui-ro-t0ken"
PWN = "document.title='PWNED'"
HOSTILE = [
    f"<img src=x onerror={PWN}>",
    f"x');{PWN};('",
    f'x");{PWN};("',
    f"</script><script>{PWN}</script>",
    f"<svg onload={PWN}>/with/slashes?and#hash",
]


class UiWait(Workflow):
    """Waits for ``finish``; its input and output echo whatever it was given (hostile payloads)."""

    name = "ui.Wait"

    def __init__(self) -> None:
        self.done = False

    async def execute(self, payload: Any) -> Any:
        await workflow.wait(lambda: self.done)
        return {"echo": payload}

    @signal
    def finish(self) -> None:
        self.done = True

    @query
    def peek(self) -> bool:
        return self.done


_charges: dict[str, int] = {}


@activity(name="ui.charge", tries=3, backoff=(0.2,))
def ui_charge(order_id: str) -> str:
    """Declines the first attempt of each order (a traceback with a hostile message), then succeeds."""
    _charges[order_id] = _charges.get(order_id, 0) + 1
    if _charges[order_id] == 1:
        raise RuntimeError(f"card declined <img src=x onerror={PWN}>")
    return f"receipt-{order_id}"


class UiShip(Workflow):
    """The child of ``ui.Order``."""

    name = "ui.Ship"

    async def execute(self, order_id: str) -> str:
        return f"shipped-{order_id}"


class UiOrder(Workflow):
    """An activity that fails once, a child, then a wait with a timeout (a pending timer)."""

    name = "ui.Order"

    def __init__(self) -> None:
        self.done = False

    async def execute(self, order_id: str) -> dict:
        receipt = await workflow.activity(ui_charge, order_id)
        shipped = await workflow.child(UiShip, order_id)
        await workflow.wait(lambda: self.done, timeout=3600)
        return {"receipt": receipt, "shipped": shipped}

    @signal
    def finish(self) -> None:
        self.done = True


class UiStreamer(Workflow):
    """Streams two hostile items, waits for ``finish``, streams a third and completes."""

    name = "ui.Streamer"

    def __init__(self) -> None:
        self.done = False

    async def execute(self) -> str:
        workflow.stream({"token": HOSTILE[0]})
        workflow.stream(HOSTILE[3])
        await workflow.wait(lambda: self.done)
        workflow.stream("last")
        return "ok"

    @signal
    def finish(self) -> None:
        self.done = True


@pytest.fixture(scope="module")
def client(kafka_server, pg_server, tmp_path_factory) -> Iterator[Client]:
    """One node, one projector and one Client for the module."""
    with module_stack(kafka_server, pg_server, tmp_path_factory.mktemp("node"), "ui") as c:
        yield c


@pytest.fixture(scope="module")
def base_url(client: Client) -> Iterator[str]:
    """The API and UI on a real uvicorn (the browser needs a socket), with a read-write and a read-only token."""
    sock = bind("127.0.0.1", 0)
    app = create_app(client, webhook_auth="none", api_tokens=f"admin:{RW},ro:viewer:{RO}")
    srv = server(app, sock)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1500, "height": 950}, timezone_id="UTC")
    pg = context.new_page()
    pg.dialogs = []  # type: ignore[attr-defined]  # every dialog the page opened, in order

    def on_dialog(dialog: Dialog) -> None:
        pg.dialogs.append((dialog.type, dialog.message))  # type: ignore[attr-defined]
        dialog.accept() if getattr(pg, "accept_dialogs", True) else dialog.dismiss()

    pg.on("dialog", on_dialog)
    yield pg
    context.close()


def api(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {RW}"}, timeout=30)


def wait_status(http: httpx.Client, workflow_id: str, wanted: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = http.get("/workflows/" + quote(workflow_id, safe=""))
        if r.status_code == 200 and r.json()["status"] == wanted:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"{workflow_id!r} never reached {wanted}: {r.status_code} {r.text[:300]}")


def log_in(page: Page, base_url: str, token: str, fragment: str = "") -> None:
    page.goto(base_url + "/" + fragment)
    page.fill("#token", token)
    page.click("#token-save")


def assert_no_script_ran(page: Page) -> None:
    assert page.title() == "Metamorph"
    assert page.evaluate("document.querySelectorAll('img, svg, iframe, main script').length") == 0
    assert all(kind == "confirm" for kind, _ in page.dialogs), page.dialogs  # type: ignore[attr-defined]


# -- tests -----------------------------------------------------------------------------------------------
def test_hostile_ids_types_and_payloads_render_as_text_and_cancel_works(base_url: str, page: Page) -> None:
    tag = uuid.uuid4().hex[:6]
    with api(base_url) as http:
        ids = []
        for text in HOSTILE:
            r = http.post("/workflows", json={"type": "ui.Wait", "id": f"{text}-{tag}", "args": [HOSTILE]})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        hostile_type = f"<img src=x onerror={PWN}>-{tag}"  # no node knows it: blocked, but listed
        blocked = http.post("/workflows", json={"type": hostile_type, "args": [HOSTILE]}).json()["id"]
        for wid in ids:
            wait_status(http, wid, "waiting")

        log_in(page, base_url, RW)
        listed = page.locator("#list td.id")
        for wid in ids:
            expect(listed.filter(has_text=wid).first).to_have_text(wid)
        expect(page.locator("#list td", has_text=hostile_type).first).to_have_text(hostile_type)
        assert_no_script_ran(page)

        target = ids[1]  # the quote-breaking id of the stored XSS in the old inline onclick
        page.locator("#list a", has_text=target).first.click()
        expect(page.locator("#detail h2 .wid")).to_have_text(target)
        expect(page.locator("#detail pre.input")).to_contain_text(HOSTILE[0])
        expect(page.locator("#detail table.history")).to_contain_text("WorkflowStarted")
        page.locator("#detail table.history summary").first.click()  # an event's details, as text
        expect(page.locator("#detail table.history pre").first).to_be_visible()
        stray = "[...document.getElementById('detail').childNodes].filter((n) => n.nodeType === 3).length"
        assert page.evaluate(stray) == 0  # no stray text such as "null" between the sections
        assert_no_script_ran(page)

        page.accept_dialogs = False  # type: ignore[attr-defined]  # "no" to the confirmation: nothing happens
        page.click("#act-cancel")
        time.sleep(1)
        assert http.get("/workflows/" + quote(target, safe="")).json()["status"] == "waiting"
        page.accept_dialogs = True  # type: ignore[attr-defined]
        page.click("#act-cancel")
        expect(page.locator("#action-result")).to_have_text("cancel: accepted")
        assert page.dialogs[-1] == ("confirm", f"Cancel workflow {target}?")  # type: ignore[attr-defined]
        wait_status(http, target, "cancelled")
        expect(page.locator("#detail h2 .s")).to_have_text("cancelled", timeout=10_000)

        page.goto(base_url + "/#/w/" + quote(blocked, safe=""))  # deep link, hostile type
        expect(page.locator("#detail h2 .wid")).to_have_text(blocked)
        expect(page.locator("#detail p.muted").first).to_contain_text(hostile_type)
        assert_no_script_ran(page)
        for wid in ids:
            http.post("/workflows/" + quote(wid, safe="") + "/terminate", json={"reason": PWN})


def test_a_wrong_token_shows_a_visible_error(base_url: str, page: Page) -> None:
    log_in(page, base_url, "not-the-token")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("Unauthorized")
    assert page.locator("#list tr").count() == 0
    page.goto(base_url + "/#/w/anything")  # the workflow page says so too
    expect(page.locator("#detail [role=alert]")).to_contain_text("Unauthorized")


def test_a_read_only_token_reads_but_its_actions_show_forbidden(base_url: str, page: Page) -> None:
    wid = f"ro/{uuid.uuid4().hex[:6]}"
    with api(base_url) as http:
        assert http.post("/workflows", json={"type": "ui.Wait", "id": wid, "args": [1]}).status_code == 201
        wait_status(http, wid, "waiting")
        log_in(page, base_url, RO, "#/w/" + quote(wid, safe=""))
        expect(page.locator("#detail h2 .wid")).to_have_text(wid)
        expect(page.locator("#error")).to_be_hidden()
        page.click("#act-terminate")
        expect(page.locator("#action-result")).to_contain_text("Forbidden")
        page.select_option("#call-kind", "query")  # a query only reads: allowed
        page.fill("#call-name", "peek")
        page.click("#act-call")
        expect(page.locator("#action-result")).to_have_text("query: false")
        assert http.get("/workflows/" + quote(wid, safe="")).json()["status"] == "waiting"
        http.post("/workflows/" + quote(wid, safe="") + "/signal/finish")
        wait_status(http, wid, "completed")


def test_id_search_signal_from_the_ui_and_paging(base_url: str, page: Page) -> None:
    kind = f"ui.Unknown{uuid.uuid4().hex[:6]}"  # no node runs it: rows stay as written
    with api(base_url) as http:
        for i in range(21):
            assert http.post("/workflows", json={"type": kind, "id": f"{kind}/{i}"}).status_code == 201
        wid = f"search/{uuid.uuid4().hex[:6]}"
        http.post("/workflows", json={"type": "ui.Wait", "id": wid, "args": ["s"]})
        wait_status(http, wid, "waiting")
        # A start needs only Kafka: its row reaches PostgreSQL a moment later (written in the background or
        # by the projector), so the paging below waits until all 21 are listed.
        wait_until(lambda: http.get("/workflows/count", params={"type": kind}).json()["count"] == 21, 20, "21 rows")

        log_in(page, base_url, RW)
        page.fill("#type", kind)
        page.select_option("#limit", "20")
        page.dispatch_event("#type", "change")
        expect(page.locator("#page")).to_have_text("1–20")
        expect(page.locator("#prev")).to_be_disabled()
        page.click("#next")
        expect(page.locator("#page")).to_have_text("21–21")
        expect(page.locator("#next")).to_be_disabled()
        expect(page.locator("#list td.id")).to_have_text([f"{kind}/0"])  # newest first: the first one last
        expect(page.locator("#count")).to_have_text("of 21")
        page.click("#prev")  # back through the cursor stack
        expect(page.locator("#page")).to_have_text("1–20")
        expect(page.locator("#list td.id").first).to_have_text(f"{kind}/20")
        expect(page.locator("#next")).to_be_enabled()

        page.fill("#search-id", wid)
        page.press("#search-id", "Enter")
        expect(page.locator("#detail h2 .wid")).to_have_text(wid)
        assert page.url.endswith("#/w/" + quote(wid, safe=""))
        page.fill("#call-name", "finish")
        page.click("#act-call")
        expect(page.locator("#action-result")).to_have_text("signal: accepted")
        assert wait_status(http, wid, "completed")["output"] == {"echo": "s"}


def test_time_range_and_search_attribute_filters(base_url: str, page: Page) -> None:
    kind = f"ui.Range{uuid.uuid4().hex[:6]}"  # no node runs it: rows stay as written
    with api(base_url) as http:
        for i in range(3):
            r = http.post("/workflows", json={"type": kind, "id": f"{kind}/old{i}", "search": {"amount": 50 * i, "tier": "gold" if i else "basic"}})
            assert r.status_code == 201, r.text
        time.sleep(1.2)
        cut = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        time.sleep(2.2)  # every later start is after ``cut``, whatever the second's rounding
        for i in range(2):
            assert http.post("/workflows", json={"type": kind, "id": f"{kind}/new{i}", "search": {"amount": 500}}).status_code == 201
        deadline = time.monotonic() + 20
        while http.get("/workflows/count", params={"type": kind}).json()["count"] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)

        log_in(page, base_url, RW)
        page.fill("#type", kind)
        page.dispatch_event("#type", "change")
        expect(page.locator("#list td.id")).to_have_count(5)
        expect(page.locator("#count")).to_have_text("of 5")
        local = cut.strftime("%Y-%m-%dT%H:%M:%S")  # the page runs in UTC (the context's time zone)
        page.fill("#started-after", local)
        page.dispatch_event("#started-after", "change")
        expect(page.locator("#list td.id")).to_have_text([f"{kind}/new1", f"{kind}/new0"])
        page.fill("#started-after", "")
        page.fill("#started-before", local)
        page.dispatch_event("#started-before", "change")
        expect(page.locator("#list td.id")).to_have_text([f"{kind}/old2", f"{kind}/old1", f"{kind}/old0"])
        expect(page.locator("#count")).to_have_text("of 3")
        page.fill("#search", "amount<=100; tier=gold")  # two filters, and the time range still holds
        page.dispatch_event("#search", "change")
        expect(page.locator("#list td.id")).to_have_text([f"{kind}/old2", f"{kind}/old1"])
        expect(page.locator("#list td.attrs").first).to_have_text("amount=100tier=gold")
        page.fill("#search", "amount")  # a filter the API refuses (no operator): a visible error, no stale rows
        page.dispatch_event("#search", "change")
        expect(page.locator("#error")).to_contain_text("BadRequest")
        expect(page.locator("#list tr")).to_have_count(0)


def test_start_form_validates_json_and_opens_the_started_workflow(base_url: str, page: Page) -> None:
    wid = f"{HOSTILE[3]}/start-{uuid.uuid4().hex[:6]}"
    log_in(page, base_url, RW, "#/start")
    expect(page.locator("#view-start")).to_be_visible()
    page.fill("#start-type", "ui.Wait")
    page.fill("#start-id", wid)
    page.fill("#start-args", '["unclosed"')
    page.click("#start-submit")
    expect(page.locator("#start-result")).to_contain_text("args: not valid JSON")
    page.fill("#start-args", '{"not": "an array"}')
    page.click("#start-submit")
    expect(page.locator("#start-result")).to_have_text("args must be a JSON array")
    page.fill("#start-args", f'[{{"order": "{PWN}"}}]')
    page.fill("#start-search", "[1]")
    page.click("#start-submit")
    expect(page.locator("#start-result")).to_have_text("search must be a JSON object")
    with api(base_url) as http:
        assert http.get("/workflows/" + quote(wid, safe="")).status_code == 404  # nothing was sent
        page.fill("#start-search", '{"customer": "c-7", "amount": 250}')
        page.fill("#start-memo", json.dumps({"note": HOSTILE[0]}))
        page.select_option("#start-if-running", "fail")
        page.fill("#start-delay", "0")
        page.fill("#start-timeout", "600")
        page.fill("#start-priority", "2")
        page.click("#start-submit")
        expect(page.locator("#detail h2 .wid")).to_have_text(wid)  # success opens the workflow page
        assert page.url.endswith("#/w/" + quote(wid, safe="!*'()"))  # as encodeURIComponent writes it
        wait_status(http, wid, "waiting")
        page.click("#refresh")
        expect(page.locator("#detail table.search")).to_contain_text("customer")
        expect(page.locator("#detail table.search")).to_contain_text("c-7")
        expect(page.locator("#detail table.memo")).to_contain_text(HOSTILE[0])
        started = page.locator("#detail table.history tr", has_text="WorkflowStarted")
        expect(started.locator("summary")).to_contain_text("priority=2")  # scalar fields first in the line
        expect(started.locator("pre")).to_contain_text('"timeout_at": ')  # the event's every field, expanded
        expect(page.locator("#detail pre.input")).to_contain_text(PWN)
        assert_no_script_ran(page)

        page.goto(base_url + "/#/start")  # the same id again with if_running=fail: a visible refusal
        page.fill("#start-type", "ui.Wait")
        page.fill("#start-id", wid)
        page.select_option("#start-if-running", "fail")
        page.click("#start-submit")
        expect(page.locator("#start-result")).to_contain_text("WorkflowAlreadyStarted")
        assert "#/start" in page.url
        page.fill("#start-priority", "12")  # refused by the API: shown, not swallowed
        page.select_option("#start-if-running", "")
        page.fill("#start-id", wid + "-p")
        page.click("#start-submit")
        expect(page.locator("#start-result")).to_contain_text("BadRequest")

        log_in(page, base_url, RO, "#/start")  # a read-only token may not start
        page.fill("#start-type", "ui.Wait")
        page.click("#start-submit")
        expect(page.locator("#start-result")).to_contain_text("Forbidden")
        assert_no_script_ran(page)
        http.post("/workflows/" + quote(wid, safe="") + "/signal/finish")


def test_workflow_page_sections_pause_resume_and_reset(base_url: str, page: Page) -> None:
    wid = f"order/{HOSTILE[1]}-{uuid.uuid4().hex[:6]}"
    with api(base_url) as http:
        r = http.post("/workflows", json={"type": "ui.Order", "id": wid, "args": [wid],
                                          "search": {"customer": HOSTILE[0]}, "memo": {"note": HOSTILE[2]}})
        assert r.status_code == 201, r.text
        wait_status(http, wid, "waiting", timeout=40)
        log_in(page, base_url, RW, "#/w/" + quote(wid, safe=""))
        expect(page.locator("#detail h2 .wid")).to_have_text(wid)

        activity_box = page.locator("#detail .activity").first
        expect(activity_box).to_contain_text("ui.charge")
        expect(activity_box).to_contain_text("2 attempts")
        activity_box.locator("summary", has_text="traceback").first.click()
        expect(activity_box.locator("pre.traceback").first).to_contain_text(f"card declined <img src=x onerror={PWN}>")
        expect(page.locator("#detail table.exceptions")).to_contain_text("RuntimeError")
        expect(page.locator("#detail table.timers tbody tr")).to_have_count(1)  # the wait's timeout
        expect(page.locator("#detail table.search")).to_contain_text(HOSTILE[0])
        expect(page.locator("#detail table.memo")).to_contain_text(HOSTILE[2])
        expect(page.locator("#detail table.history")).to_contain_text("TimerStarted")
        row = page.locator("#detail table.history tr", has_text="TimerStarted")
        row.locator("summary").click()
        expect(row.locator("pre")).to_contain_text("fire_at")
        expect(page.locator("#stream-state")).to_have_text(re.compile("no stream|live|ended"))
        assert_no_script_ran(page)

        child = page.locator("#detail table.children a").first
        child_id = child.inner_text()
        page.locator("#detail table.history td.event a", has_text=child_id).click()  # the timeline links it too
        expect(page.locator("#detail h2 .wid")).to_have_text(child_id)
        expect(page.locator("#detail h2 .s")).to_have_text("completed")
        page.locator("#detail .links a", has_text=wid).click()  # and back through the parent link
        expect(page.locator("#detail h2 .wid")).to_have_text(wid)

        page.click("#act-pause")
        expect(page.locator("#action-result")).to_have_text("pause: accepted")
        assert page.dialogs[-1][1].startswith(f"Pause workflow {wid}?")  # type: ignore[attr-defined]
        wait_status(http, wid, "paused")
        expect(page.locator("#detail h2 .s")).to_have_text("paused", timeout=10_000)
        page.click("#act-resume")
        expect(page.locator("#action-result")).to_have_text("resume: accepted")
        wait_status(http, wid, "waiting")

        before = http.get("/workflows/" + quote(wid, safe="")).json()
        started = next(e for e in before["history"] if e["type"] == "ChildCompleted")
        page.click("#refresh")
        page.locator(f"#detail table.history tr[data-seq='{started['seq']}'] button.reset-here").click()
        expect(page.locator("#reset-seq")).to_have_value(str(started["seq"]))
        page.accept_dialogs = False  # type: ignore[attr-defined]
        page.click("#act-reset")
        time.sleep(1)
        assert http.get("/workflows/" + quote(wid, safe="")).json()["run_id"] == before["run_id"]
        page.accept_dialogs = True  # type: ignore[attr-defined]
        page.click("#act-reset")
        expect(page.locator("#action-result")).to_have_text("reset: accepted")
        assert f"to event {started['seq']}?" in page.dialogs[-1][1]  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = http.get("/workflows/" + quote(wid, safe="")).json()
            if after["run_id"] != before["run_id"] and after["status"] == "waiting":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no new waiting run after the reset: {after}")
        assert len(after["runs"]) == 2
        expect(page.locator("#detail table.runs tbody tr")).to_have_count(2, timeout=10_000)
        assert_no_script_ran(page)
        http.post("/workflows/" + quote(wid, safe="") + "/terminate")
        wait_status(http, wid, "terminated")
        page.click("#act-pause")  # an ended workflow refuses: the API's error is shown, not swallowed
        expect(page.locator("#action-result")).to_contain_text("WorkflowNotRunning")


def test_a_read_only_token_gets_the_actions_disabled_after_a_403(base_url: str, page: Page) -> None:
    wid = f"ro-pause/{uuid.uuid4().hex[:6]}"
    with api(base_url) as http:
        assert http.post("/workflows", json={"type": "ui.Wait", "id": wid, "args": [1]}).status_code == 201
        wait_status(http, wid, "waiting")
        log_in(page, base_url, RO, "#/w/" + quote(wid, safe=""))
        expect(page.locator("#act-pause")).to_be_enabled()
        page.click("#act-pause")
        expect(page.locator("#action-result")).to_contain_text("Forbidden")
        expect(page.locator("#action-result")).to_contain_text("this token may only read")
        for button in ("#act-cancel", "#act-terminate", "#act-pause", "#act-resume", "#act-reset"):
            expect(page.locator(button)).to_be_disabled()
        expect(page.locator("#act-call")).to_be_enabled()  # queries still work
        assert http.get("/workflows/" + quote(wid, safe="")).json()["status"] == "waiting"
        http.post("/workflows/" + quote(wid, safe="") + "/terminate")


SSE_BODY = (
    "retry: 1000\n\n"
    f'id: 1\ndata: {{"token": "<img src=x onerror={PWN}>"}}\n\n'
    ": keep-alive\n\n"
    f'id: 2\ndata: "</script><script>{PWN}</script>"\n\n'
    'event: end\ndata: {"status": "completed"}\n\n'
)


def test_live_stream_view_renders_items_as_text_with_the_bearer_token(base_url: str, page: Page) -> None:
    """The stream route is stubbed (Playwright) so the view is tested whatever the server offers."""
    wid = f"stream/{HOSTILE[0]}-{uuid.uuid4().hex[:6]}"
    seen: list[dict] = []

    def fulfil(route: Any) -> None:
        seen.append({"url": route.request.url, "authorization": route.request.headers.get("authorization")})
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=SSE_BODY)

    with api(base_url) as http:
        assert http.post("/workflows", json={"type": "ui.Wait", "id": wid, "args": [1]}).status_code == 201
        wait_status(http, wid, "waiting")
        page.route(re.compile(r".*/stream(\?.*)?$"), fulfil)
        log_in(page, base_url, RW, "#/w/" + quote(wid, safe=""))
        expect(page.locator("#stream-items li")).to_have_count(2)
        expect(page.locator("#stream-items li").nth(0)).to_have_text(json.dumps({"token": f"<img src=x onerror={PWN}>"}, separators=(",", ":")))
        expect(page.locator("#stream-items li").nth(1)).to_have_text(json.dumps(f"</script><script>{PWN}</script>"))
        expect(page.locator("#stream-state")).to_have_text("ended (completed) · 2 items")
        assert seen and seen[-1]["authorization"] == f"Bearer {RW}"
        assert seen[-1]["url"].endswith("/workflows/" + quote(wid, safe="!*'()") + "/stream?after=0")
        assert_no_script_ran(page)

        page.unroute(re.compile(r".*/stream(\?.*)?$"))
        page.route(re.compile(r".*/stream(\?.*)?$"), lambda route: route.fulfill(
            status=404, headers={"Content-Type": "application/json"},
            body=json.dumps({"error": "NotFound", "message": "no route"})))
        page.goto(base_url + "/#/")
        page.goto(base_url + "/#/w/" + quote(wid, safe=""))
        expect(page.locator("#stream-state")).to_have_text("no stream")  # quietly: no banner
        expect(page.locator("#error")).to_be_hidden()
        http.post("/workflows/" + quote(wid, safe="") + "/terminate")


def test_schedules_page_lists_and_acts_with_confirmation(base_url: str, page: Page) -> None:
    sid = f"{HOSTILE[0]}/{HOSTILE[1]}-{uuid.uuid4().hex[:6]}"
    with api(base_url) as http:
        r = http.post("/schedules", json={"id": sid, "type": "ui.Wait", "args": [HOSTILE], "every": 3600})
        assert r.status_code == 201, r.text
        odd = f"{HOSTILE[3]}-{uuid.uuid4().hex[:6]}"  # a hostile workflow type and pause note too
        r = http.post("/schedules", json={"id": odd, "type": HOSTILE[2], "cron": "0 3 * * *", "paused": True})
        assert r.status_code == 201, r.text
        assert http.post("/schedules/" + quote(odd, safe="") + "/pause", json={"note": HOSTILE[4]}).status_code == 200
        log_in(page, base_url, RW, "#/schedules")
        other = page.locator("#schedules tr.schedule", has_text=odd)
        expect(other.locator("td.sid")).to_have_text(odd)
        expect(other.locator(".type")).to_have_text(HOSTILE[2])
        expect(other.locator(".note")).to_have_text(HOSTILE[4])
        row = page.locator("#schedules tr.schedule", has_text=sid)
        expect(row.locator("td.sid")).to_have_text(sid)
        expect(row).to_contain_text("every 3600")
        expect(row.locator("td.next div")).to_have_count(3)
        expect(row.locator("td.recent")).to_have_text("none yet")
        assert_no_script_ran(page)

        page.accept_dialogs = False  # type: ignore[attr-defined]
        row.locator("button.trigger").click()
        time.sleep(1)
        assert http.get("/schedules/" + quote(sid, safe="")).json()["recent_runs"] == []
        page.accept_dialogs = True  # type: ignore[attr-defined]
        row.locator("button.trigger").click()
        assert page.dialogs[-1] == ("confirm", f"Start a run of schedule {sid} now?")  # type: ignore[attr-defined]
        expect(page.locator("#schedule-result")).to_contain_text(f"trigger {sid}: {sid}@")
        link = row.locator("td.recent a").first
        expect(link).to_contain_text(sid + "@")
        run_id = link.inner_text()

        row.locator("button.pause").click()
        expect(page.locator("#schedule-result")).to_have_text(f"pause {sid}: done")
        expect(row.locator("td .s").first).to_have_text("paused")
        expect(row.locator("button.resume")).to_be_visible()
        row.locator("button.resume").click()
        expect(row.locator("td .s").first).to_have_text("running")
        assert http.get("/schedules/" + quote(sid, safe="")).json()["paused"] is False

        link.click()  # a recent run opens its workflow page
        expect(page.locator("#detail h2 .wid")).to_have_text(run_id)
        assert_no_script_ran(page)

        log_in(page, base_url, RO, "#/schedules")  # read-only: the page reads, acting is refused visibly
        row = page.locator("#schedules tr.schedule", has_text=sid)
        row.locator("button.pause").click()
        expect(page.locator("#schedule-result")).to_contain_text("Forbidden")
        expect(row.locator("button.pause")).to_be_disabled()
        expect(row.locator("button.trigger")).to_be_disabled()
        assert http.get("/schedules/" + quote(sid, safe="")).json()["paused"] is False
        assert_no_script_ran(page)
        http.delete("/schedules/" + quote(sid, safe=""))
        http.delete("/schedules/" + quote(odd, safe=""))
        http.post("/workflows/" + quote(run_id, safe="") + "/terminate")


def test_live_stream_view_on_the_real_route_follows_items_live(base_url: str, page: Page) -> None:
    wid = f"streamer/{HOSTILE[1]}-{uuid.uuid4().hex[:6]}"
    with api(base_url) as http:
        assert http.post("/workflows", json={"type": "ui.Streamer", "id": wid}).status_code == 201
        wait_status(http, wid, "waiting")
        log_in(page, base_url, RW, "#/w/" + quote(wid, safe=""))
        items = page.locator("#stream-items li")
        expect(items).to_have_count(2)
        expect(items.nth(0)).to_have_text(json.dumps({"token": HOSTILE[0]}, separators=(",", ":")))
        expect(items.nth(1)).to_have_text(json.dumps(HOSTILE[3]))
        expect(page.locator("#stream-state")).to_have_text("live")
        http.post("/workflows/" + quote(wid, safe="") + "/signal/finish")  # the page is not reloaded
        expect(items).to_have_count(3, timeout=15_000)
        expect(items.nth(2)).to_have_text('"last"')
        expect(page.locator("#stream-state")).to_have_text("ended (completed) · 3 items", timeout=15_000)
        assert_no_script_ran(page)
