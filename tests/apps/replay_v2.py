"""The same workflow type after an incompatible change (version 2): it ships before it charges.

Replaying version 1's histories against this code must report a non-determinism at the first activity.
"""

from __future__ import annotations

from actors import Workflow, activity, signal, workflow


@activity(name="rpl.charge")
def charge(order_id: str) -> str:
    return f"charged-{order_id}"


@activity(name="rpl.ship")
def ship(order_id: str) -> str:
    return f"shipped-{order_id}"


class ReplayOrder(Workflow):
    name = "rpl.Order"

    def __init__(self) -> None:
        self.approved = False

    async def execute(self, order_id: str) -> list[str]:
        shipped = await workflow.activity(ship, order_id)
        await workflow.wait(lambda: self.approved)
        return [await workflow.activity(charge, order_id), shipped]

    @signal
    def approve(self) -> None:
        self.approved = True
