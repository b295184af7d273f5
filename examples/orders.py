"""The tutorial: an order pipeline with activities, a durable timer, a signal, a query and a saga.

Run it end to end with ``metamorph demo``, or against your own cluster::

    metamorph node --app examples.orders            # workflow and activity actors
    metamorph projector                              # status views in PostgreSQL
    metamorph start examples.orders.OrderWorkflow '"A-1"' 250 --id order-A-1
    metamorph signal order-A-1 approve '"alice"'
    metamorph result order-A-1

Everything the workflow awaits is recorded. Kill the node at any point and start it again: the order
carries on from the step it was at, and no activity result is recorded twice.
"""

from __future__ import annotations

import asyncio

from actors import (
    ActivityFailed,
    Workflow,
    WorkflowCancelled,
    activity,
    activity_info,
    heartbeat,
    query,
    signal,
    workflow,
)


# -- activities: the only place that talks to the outside world ------------------------------------------
@activity(tries=3, backoff=(0.2, 0.5))
def charge_card(order_id: str, amount: int) -> str:
    """A flaky payment API: the first attempt times out, the retry succeeds."""
    if activity_info().attempt == 1:
        raise ConnectionError("payment gateway timed out")
    return f"receipt-{order_id}-{amount}"


@activity
def refund_card(receipt: str) -> str:
    return f"refunded {receipt}"


@activity(timeout=30, heartbeat_timeout=10)
async def reserve_stock(order_id: str, items: int) -> int:
    for done in range(items):
        await asyncio.sleep(0.01)  # a real activity, so this is a real sleep
        heartbeat({"reserved": done + 1})
    return items


@activity
def release_stock(order_id: str) -> None:
    return None


@activity
def ship(order_id: str, approver: str) -> str:
    return f"tracking-{order_id}-by-{approver}"


# -- the workflow: ordinary async Python, replayed deterministically -------------------------------------
class OrderWorkflow(Workflow):
    name = "examples.orders.OrderWorkflow"

    def __init__(self) -> None:
        self.stage = "received"
        self.approver: str | None = None

    async def execute(self, order_id: str, amount: int) -> dict:
        try:
            self.stage = "charging"
            receipt = await workflow.activity(charge_card, order_id, amount)
            self.add_compensation(lambda: workflow.activity(refund_card, receipt))

            self.stage = "reserving"
            reserved, _ = await asyncio.gather(  # two steps at once
                workflow.activity(reserve_stock, order_id, 3),
                workflow.timer(0.5),  # a durable timer: survives restarts
            )
            self.add_compensation(lambda: workflow.activity(release_stock, order_id))

            self.stage = "awaiting approval"
            if not await workflow.wait(lambda: self.approver is not None, timeout=3600):
                raise TimeoutError("nobody approved the order within an hour")

            self.stage = "shipping"
            tracking = await workflow.activity(ship, order_id, self.approver)
            self.stage = "done"
            return {"order": order_id, "receipt": receipt, "reserved": reserved, "tracking": tracking}
        except (ActivityFailed, TimeoutError, WorkflowCancelled):
            # `metamorph cancel` raises WorkflowCancelled (an asyncio.CancelledError) at the step the
            # order is waiting on, so a cancelled order is refunded and released too; re-raising keeps
            # the status `failed` or `cancelled`.
            self.stage = "compensating"
            await self.compensate()
            raise

    @signal
    def approve(self, by: str) -> None:
        self.approver = by

    @query
    def current_stage(self) -> str:
        return self.stage
