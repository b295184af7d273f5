"""A saga that compensates and then fails (for the retry-after-compensation tests in test_pause_runtime)."""

from __future__ import annotations

from actors import ActivityFailed, NonRetryableError, Workflow, activity, workflow

#: Payments to decline, by trip id (the node runs in the test's process, so the test sets this).
DECLINE: set[str] = set()


@activity(name="tests.saga.book")
def book(trip: str) -> str:
    return f"booked {trip}"


@activity(name="tests.saga.unbook")
def unbook(trip: str) -> str:
    return f"unbooked {trip}"


@activity(name="tests.saga.pay", tries=1)
def pay(trip: str) -> str:
    if trip in DECLINE:
        raise NonRetryableError("card declined")
    return f"paid {trip}"


class Trip(Workflow):
    name = "tests.saga.Trip"

    async def execute(self, trip: str) -> str:
        await workflow.activity(book, trip)
        self.add_compensation(lambda: workflow.activity(unbook, trip))
        try:
            return await workflow.activity(pay, trip)
        except ActivityFailed:
            await self.compensate()
            raise


class Fragile(Workflow):
    """Fails without compensating: a retry needs no force."""

    name = "tests.saga.Fragile"

    async def execute(self, trip: str) -> str:
        await workflow.activity(book, trip)
        return await workflow.activity(pay, trip)
