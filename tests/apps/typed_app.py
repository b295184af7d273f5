"""Workflows and activities with typed payloads (dataclasses, Pydantic models), for tests/test_typed.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from pydantic import BaseModel

from actors import Workflow, activity, query, signal, workflow


@dataclass
class Item:
    sku: str
    qty: int


@dataclass
class Order:
    id: str
    items: list[Item]
    placed: datetime
    note: Optional[str] = None  # noqa: UP045 - Optional on purpose: it is what users write
    tags: list[str] = field(default_factory=list)


@dataclass
class Receipt:
    order_id: str
    total_qty: int
    first: Item
    placed: datetime


class Customer(BaseModel):
    name: str
    vip: bool = False
    address: Optional[Address] = None  # noqa: UP045


class Address(BaseModel):
    city: str


Customer.model_rebuild()

SEEN: dict[str, object] = {}


@activity(name="typed.charge")
def charge(order: Order, customer: Customer) -> Receipt:
    assert isinstance(order, Order) and isinstance(order.items[0], Item), order
    assert isinstance(order.placed, datetime) and isinstance(customer, Customer)
    SEEN["charge"] = (order, customer)
    return Receipt(order.id, sum(i.qty for i in order.items), order.items[0], order.placed)


@activity(name="typed.receipts")
async def receipts(orders: list[Order]) -> list[Receipt]:
    return [Receipt(o.id, sum(i.qty for i in o.items), o.items[0], o.placed) for o in orders]


@activity(name="typed.untyped")
def untyped(value):  # noqa: ANN001, ANN201 - no annotations: passed through as JSON
    return {"echo": value}


@activity(name="typed.plain")
def plain(amount: int) -> int:
    return amount


@activity(name="typed.lies")
def lies(order_id: str) -> Receipt:
    return {"order_id": order_id, "total_qty": "many", "first": {"sku": "x", "qty": 1}, "placed": "2030-01-01T00:00:00Z"}  # type: ignore[return-value]


class TypedOrder(Workflow):
    name = "typed.TypedOrder"

    def __init__(self) -> None:
        self.customer: Customer | None = None

    async def execute(self, order: Order, customer: Customer) -> Receipt:
        assert isinstance(order, Order) and isinstance(customer, Customer)
        receipt = await workflow.activity(charge, order, customer)
        assert isinstance(receipt, Receipt) and isinstance(receipt.first, Item) and isinstance(receipt.placed, datetime)
        many = await workflow.activity("typed.receipts", [order, order])
        assert all(isinstance(r, Receipt) for r in many)
        assert await workflow.activity(untyped, {"a": 1}) == {"echo": {"a": 1}}
        assert await workflow.activity(plain, "7") == "7"  # a plain int annotation is not converted
        return receipt

    @signal
    def set_customer(self, customer: Customer) -> None:
        assert isinstance(customer, Customer)
        self.customer = customer

    @query
    def customer_name(self) -> str | None:
        return self.customer.name if self.customer else None


class WaitsForCustomer(Workflow):
    name = "typed.WaitsForCustomer"

    def __init__(self) -> None:
        self.customer: Customer | None = None

    async def execute(self) -> Customer:
        await workflow.wait(lambda: self.customer is not None)
        assert self.customer is not None
        return self.customer

    @signal
    def set_customer(self, customer: Customer) -> None:
        self.customer = customer


class Parent(Workflow):
    name = "typed.Parent"

    async def execute(self, order: Order) -> list[Receipt]:
        receipt = await workflow.child(TypedOrder, order, Customer(name="kid"))
        assert isinstance(receipt, Receipt), receipt
        return [receipt]


class TrustsLies(Workflow):
    name = "typed.TrustsLies"

    async def execute(self, order_id: str) -> str:
        try:
            await workflow.activity(lies, order_id)
        except TypeError as exc:
            return f"caught: {exc}"
        return "not caught"
