"""The operator UI in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download).

Why a real browser: the UI's safety is about what a browser does with hostile ids, types and payloads
(parse them as HTML? run them as script?), which no HTTP-level test can observe. Each test asserts that
``document.title`` is still "Metamorph": every hostile string here tries to set it to "PWNED".

Set ``METAMORPH_SCREENSHOTS=<dir>`` to save screenshots of the list and a workflow page there.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from actors import Client, Workflow, query, signal, workflow
from actors.http import bind, create_app, server
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
    context = browser.new_context(viewport={"width": 1500, "height": 950})
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


def shot(page: Page, name: str) -> None:
    folder = os.environ.get("METAMORPH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(folder) / name), full_page=False)


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
        shot(page, "list.png")
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
        shot(page, "workflow.png")
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

        page.fill("#search-id", wid)
        page.press("#search-id", "Enter")
        expect(page.locator("#detail h2 .wid")).to_have_text(wid)
        assert page.url.endswith("#/w/" + quote(wid, safe=""))
        page.fill("#call-name", "finish")
        page.click("#act-call")
        expect(page.locator("#action-result")).to_have_text("signal: accepted")
        assert wait_status(http, wid, "completed")["output"] == {"echo": "s"}
