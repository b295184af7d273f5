"""An order workflow as deployed (version 1): the history the replay tests record comes from this code."""

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
        charged = await workflow.activity(charge, order_id)
        await workflow.wait(lambda: self.approved)
        return [charged, await workflow.activity(ship, order_id)]

    @signal
    def approve(self) -> None:
        self.approved = True
