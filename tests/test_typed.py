"""Typed payloads (issue 13 item 7): dataclasses and Pydantic models come back as themselves.

Arguments and results of activities, workflows, children and handlers are converted to the annotated
types; JSON on the wire; a value that does not fit fails with an error naming the field. Most tests run in
``WorkflowEnvironment`` (the node's own code, no broker); one runs on real Kafka end to end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from actors import PayloadTypeError, WorkflowFailed
from actors.engine.typed import convert_arguments, needs_conversion
from actors.testing import WorkflowEnvironment
from eventstore import payloads
from tests.apps.typed_app import (
    SEEN,
    Address,
    Customer,
    Item,
    Order,
    Parent,
    Receipt,
    TrustsLies,
    TypedOrder,
    WaitsForCustomer,
    charge,
)

PLACED = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _order(order_id: str = "A-1") -> Order:
    return Order(order_id, [Item("apple", 2), Item("pear", 3)], PLACED, tags=["x"])


def test_activity_and_workflow_get_their_types_back():
    env = WorkflowEnvironment()
    wid = env.start(TypedOrder, _order(), Customer(name="ann", address=Address(city="Oslo")))
    receipt = env.result(wid)
    assert receipt == Receipt("A-1", 5, Item("apple", 2), PLACED)
    order, customer = SEEN["charge"]  # type: ignore[misc]
    assert order == _order() and customer == Customer(name="ann", address=Address(city="Oslo"))
    # JSON on the wire: the history holds plain JSON, no pickle, no type tags.
    started = env.history(wid)[0]
    assert json.loads(started["input"])[0] == {"id": "A-1", "items": [{"sku": "apple", "qty": 2}, {"sku": "pear", "qty": 3}],
                                               "placed": "2030-01-02T03:04:05+00:00", "note": None, "tags": ["x"]}
    assert env.result(wid, result_type=dict)["total_qty"] == 5  # result_type= overrides the declared type
    assert env.replay(wid).status == "completed"  # conversion is deterministic: the rebuilt run agrees


def test_child_result_and_signal_argument_are_typed():
    env = WorkflowEnvironment()
    wid = env.start(Parent, _order("C-1"))
    assert env.result(wid) == [Receipt("C-1", 5, Item("apple", 2), PLACED)]
    wid = env.start(WaitsForCustomer)
    env.signal(wid, "set_customer", Customer(name="bo", vip=True))
    assert env.result(wid) == Customer(name="bo", vip=True)


def test_missing_field_in_workflow_argument_fails_the_start_naming_it():
    env = WorkflowEnvironment()
    bad = {"id": "B-1", "items": [{"sku": "apple"}], "placed": PLACED.isoformat()}
    wid = env.start(TypedOrder, bad, {"name": "ann"})
    with pytest.raises(WorkflowFailed) as info:
        env.result(wid)
    assert info.value.error_type == "PayloadTypeError"
    assert "argument 'order'" in info.value.message and "'items.0.qty'" in info.value.message
    assert "Field required" in info.value.message


def test_wrong_type_in_activity_argument_fails_the_activity_at_once_naming_the_field():
    env = WorkflowEnvironment()

    from actors import ActivityFailed, Workflow, workflow

    class CallsWithBadOrder(Workflow):
        name = "typed.test.CallsWithBadOrder"

        async def execute(self) -> str:
            try:
                await workflow.activity(charge, {"id": "x", "items": [{"sku": "a", "qty": "three"}], "placed": "2030-01-01T00:00:00Z"},
                                        {"name": "ann"})
            except ActivityFailed as exc:
                return f"{exc.error_type}|{exc.attempts}|{exc.message}"
            return "no error"

    error_type, attempts, message = env.result(env.start(CallsWithBadOrder)).split("|", 2)
    assert error_type == "TypeError" and attempts == "1"  # not retried: the same input would fail again
    assert "argument 'order'" in message and "'items.0.qty'" in message and "valid integer" in message


def test_activity_result_that_does_not_fit_raises_at_the_await_naming_the_field():
    env = WorkflowEnvironment()
    out = env.result(env.start(TrustsLies, "L-1"))
    assert out.startswith("caught: ") and "'total_qty'" in out and "typed.lies" in out


def test_signal_that_does_not_fit_is_rejected_naming_the_field():
    env = WorkflowEnvironment()
    wid = env.start(WaitsForCustomer)
    env.signal(wid, "set_customer", {"vip": True})  # no name
    rejected = [e for e in env.history(wid) if e["type"] == "CommandRejected"]
    assert rejected and "'name'" in rejected[-1]["message"] and "Field required" in rejected[-1]["message"]
    assert env.status(wid) == "waiting"


def test_untyped_and_plain_annotations_are_untouched():
    assert not needs_conversion(int) and not needs_conversion(dict[str, list[int]]) and not needs_conversion(str | None)
    assert needs_conversion(list[Order]) and needs_conversion(Order | None) and needs_conversion(dict[str, Customer])

    def f(a: int, b, c: dict) -> None:  # noqa: ANN001
        pass

    args = ["1", object(), {"k": 1}]
    out, _ = convert_arguments(f, args)
    assert out == args and out[0] == "1"  # plain annotations are not coerced


def test_error_type_and_field():
    with pytest.raises(PayloadTypeError) as info:
        convert_arguments(charge.__wrapped__ if hasattr(charge, "__wrapped__") else charge, [{"id": "x"}, {"name": "a"}])
    assert info.value.field == "items" and isinstance(info.value, TypeError)


def test_pydantic_values_encode_as_json():
    @dataclass
    class Stamp:
        at: datetime

    data = payloads.encode([Customer(name="z", address=Address(city="Rome")), Stamp(PLACED)])
    assert json.loads(data) == [{"name": "z", "vip": False, "address": {"city": "Rome"}}, {"at": "2030-01-02T03:04:05+00:00"}]


def test_typed_end_to_end_on_kafka(kafka_server, pg_server, tmp_path):
    from tests.stack import running_stack

    if not kafka_server.running:
        kafka_server.start()
    if not pg_server.running:
        pg_server.start()
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path / "node", prefix="typed") as (client, _node, _ns):
        h = client.start(TypedOrder, _order("K-1"), Customer(name="kim"), id="typed-k1")
        receipt = h.result(timeout=60)
        assert receipt == Receipt("K-1", 5, Item("apple", 2), PLACED)
        assert client.get("typed-k1").result(timeout=10)["first"] == {"sku": "apple", "qty": 2}  # no type: JSON
        assert client.get("typed-k1", result_type=Receipt).result(timeout=10) == receipt
        bad = client.start("typed.TypedOrder", {"id": "K-2", "items": [{"qty": 1}], "placed": "2030-01-01T00:00:00Z"},
                           {"name": "kim"}, id="typed-k2")
        with pytest.raises(WorkflowFailed) as info:
            bad.result(timeout=60)
        assert "'items.0.sku'" in info.value.message
