"""Screenshots of the operator UI for the README, from a running stack with realistic data.

Not part of the suite (the name does not start with ``test_``); run it explicitly::

    .venv/bin/python -m pytest -q tests/ui_screenshots.py            # writes docs/screenshots/*.png

``METAMORPH_SCREENSHOTS=<dir>`` writes elsewhere. It starts Kafka, PostgreSQL, a node and a projector like
the browser tests (same fixtures), starts a small shop's orders and schedules, waits until they settle and
photographs the list, a workflow page and the schedules page in headless Chromium. It also asserts what it
photographs, so a broken page fails here rather than ending up in the README.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page, expect

from actors import NonRetryableError, Workflow, activity, signal, workflow
from tests.test_ui import RW, api, base_url, browser, client, log_in, page, wait_status  # noqa: F401 - fixtures

OUT = Path(os.environ.get("METAMORPH_SCREENSHOTS") or Path(__file__).parent.parent / "docs" / "screenshots")
_attempts: dict[str, int] = {}


@activity(name="shop.charge_card", tries=4, backoff=(0.3,))
def charge_card(order_id: str, amount: int) -> str:
    """The gateway times out on the first attempt of some orders and refuses expired cards."""
    _attempts[order_id] = _attempts.get(order_id, 0) + 1
    if order_id.endswith("7"):
        raise NonRetryableError(f"card expired for order {order_id}")
    if order_id.endswith(("2", "4")) and _attempts[order_id] == 1:
        raise TimeoutError("payment gateway did not answer within 10s")
    return f"ch_{order_id.lower()}_{amount}"


@activity(name="shop.reserve_stock")
def reserve_stock(order_id: str) -> dict:
    return {"warehouse": "eu-west", "items": 3}


@activity(name="shop.book_carrier")
def book_carrier(order_id: str) -> str:
    return f"DHL-{order_id}"


class Reservation(Workflow):
    """Reserves the order's items in a warehouse."""

    name = "shop.Reservation"

    async def execute(self, order_id: str) -> dict:
        return await workflow.activity(reserve_stock, order_id)


class Order(Workflow):
    """Charge, reserve (a child), then large orders wait up to a day for a manager's approval, then ship."""

    name = "shop.Order"

    def __init__(self) -> None:
        self.approved_by: str | None = None

    async def execute(self, order_id: str, amount: int) -> dict:
        charge = await workflow.activity(charge_card, order_id, amount)
        stock = await workflow.child(Reservation, order_id, id=f"reserve-{order_id}")
        if amount >= 500 and not await workflow.wait(lambda: self.approved_by is not None, timeout=86400):
            return {"order": order_id, "status": "approval timed out"}
        tracking = await workflow.activity(book_carrier, order_id)
        return {"order": order_id, "charge": charge, "stock": stock, "tracking": tracking, "approved_by": self.approved_by}

    @signal
    def approve(self, by: str) -> None:
        self.approved_by = by


class NightlyReport(Workflow):
    name = "reports.Nightly"

    async def execute(self, region: str) -> str:
        return f"report-{region}"


class InventoryPoll(Workflow):
    name = "inventory.Poll"

    async def execute(self) -> int:
        return 42


def shot(pg: Page, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    pg.evaluate("window.scrollTo(0, 0)")
    pg.screenshot(path=str(OUT / name))


def test_screenshots(base_url: str, page: Page) -> None:  # noqa: F811 - the fixtures imported above
    customers = ["acme", "globex", "initech", "umbrella", "hooli", "stark"]
    with api(base_url) as http:
        for n in range(1, 13):
            order_id = f"A-10{n:02d}"
            amount = [120, 640, 80, 950, 35, 210, 499, 1200, 60, 75, 330, 15][n - 1]
            r = http.post("/workflows", json={
                "type": "shop.Order", "id": f"order-{order_id}", "args": [order_id, amount],
                "search": {"customer": customers[n % len(customers)], "amount": amount, "region": "eu" if n % 3 else "us"},
                "memo": {"channel": "web" if n % 2 else "mobile", "coupon": None if n % 4 else "BLACKFRIDAY"},
            })
            assert r.status_code == 201, r.text
        for spec in (
            {"id": "nightly-report-eu", "type": "reports.Nightly", "args": ["eu"], "cron": "0 2 * * *", "timezone": "Europe/Paris"},
            {"id": "nightly-report-us", "type": "reports.Nightly", "args": ["us"], "cron": "30 6 * * 1-5", "timezone": "America/New_York"},
            {"id": "inventory-poll", "type": "inventory.Poll", "every": 900, "overlap": "buffer_one"},
        ):
            assert http.post("/schedules", json=spec).status_code == 201
        for _ in range(2):
            assert http.post("/schedules/inventory-poll/trigger").status_code == 200
            time.sleep(1.1)  # run ids name the second they fire
        assert http.post("/schedules/nightly-report-us/trigger").status_code == 200
        assert http.post("/schedules/nightly-report-us/pause", json={"note": "US office closed this week"}).status_code == 200
        wait_status(http, "order-A-1002", "waiting", timeout=60)
        wait_status(http, "order-A-1007", "failed", timeout=60)
        wait_status(http, "order-A-1001", "completed", timeout=60)
        http.post("/workflows/order-A-1008/signal/approve", json={"args": ["maria@shop.example"]})
        wait_status(http, "order-A-1008", "completed", timeout=60)
        assert http.post("/workflows/order-A-1002/pause", json={"reason": "fraud check"}).status_code == 202
        wait_status(http, "order-A-1002", "paused", timeout=60)

        log_in(page, base_url, RW)
        expect(page.locator("#list td.id", has_text="order-A-1001")).to_be_visible()
        expect(page.locator("#list td", has_text="failed").first).to_be_visible()
        shot(page, "list.png")

        page.goto(base_url + "/#/w/" + quote("order-A-1004", safe=""))
        expect(page.locator("#detail .activity").first).to_contain_text("2 attempts")
        expect(page.locator("#detail table.timers tbody tr")).to_have_count(1)
        expect(page.locator("#detail table.children a")).to_have_text("reserve-A-1004")
        page.locator("#detail .activity summary", has_text="traceback").first.click()
        shot(page, "workflow.png")

        page.goto(base_url + "/#/schedules")
        expect(page.locator("#schedules tr.schedule")).to_have_count(3)
        expect(page.locator("#schedules tr.schedule", has_text="inventory-poll").locator("td.recent a")).to_have_count(2)
        shot(page, "schedules.png")
