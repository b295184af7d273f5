"""Search attributes and memo (docs/API.md §6, §10) in workflow code, and the checks of list/count/batch inputs
(docs/API.md §7): fast, no broker or database; the end-to-end behaviour is in test_search_runtime.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from actors import Client, NondeterminismError, Workflow, workflow
from actors.search import decode_cursor, encode_cursor, filters_from_text, parse_filters
from actors.testing import WorkflowEnvironment, replay
from tests.apps.search_app import Tagged


def _offline() -> Client:
    """A client whose broker and database do not exist: anything that reached them would fail otherwise."""
    return Client(kafka="127.0.0.1:9", postgres="postgresql://nobody@127.0.0.1:9/none", namespace="offline")


def test_upsert_search_and_memo_are_recorded_and_merged():
    env = WorkflowEnvironment()
    wid = env.start(Tagged, "new", id="t-1", search={"customer": "c-7", "obsolete": True}, memo={"by": "alice"})
    env.sleep(1)
    assert env.search_attributes(wid) == {"customer": "c-7", "stage": "new", "step": 2}  # None removed a key
    assert env.memo(wid) == {"by": "alice", "note": "stage new"}
    kinds = [e["type"] for e in env.history(wid)]
    assert kinds.count("AttributesUpserted") == 3
    env.signal(wid, "finish")
    assert env.result(wid) == "new"


def test_a_replay_of_upserts_matches_and_takes_the_recorded_values():
    env = WorkflowEnvironment()
    wid = env.start(Tagged, "new", id="t-2")
    env.sleep(1)
    rebuilt = env.replay(wid)
    assert rebuilt.status == "waiting" and rebuilt.run.blocked is None
    assert replay(env.history(wid), Tagged) == "waiting"

    class Forgetful(Workflow):  # the same steps without the upserts: a replay mismatch, reported
        name = "search.Forgetful"  # its own name: registering "search.Tagged" would replace the real one

        async def execute(self, stage: str = "new", continue_once: bool = False) -> str:
            await workflow.timer(0.05)
            await workflow.wait(lambda: False)
            return stage

    history = [{**e, "workflow_type": "search.Forgetful"} if e["type"] == "WorkflowStarted" else e for e in env.history(wid)]
    with pytest.raises(NondeterminismError) as info:
        replay(history, Forgetful)
    assert "AttributesUpserted" in str(info.value)


def test_upsert_of_an_unsupported_value_fails_the_workflow_naming_the_key():
    class Bad(Workflow):
        name = "search.Bad"

        async def execute(self) -> None:
            workflow.upsert_search({"tags": ["a", "b"]})

    env = WorkflowEnvironment()
    wid = env.start(Bad, id="t-3")
    assert env.status(wid) == "failed"
    last = env.history(wid)[-1]
    assert last["error_type"] == "ValueError" and "'tags'" in last["message"]


def test_start_refuses_search_values_of_unsupported_types_before_sending():
    client = _offline()
    for bad in ({"items": [1, 2]}, {"when": datetime(2030, 1, 1)}, {"nan": float("nan")}, {"x": None}, {"": 1}):
        with pytest.raises(ValueError) as info:
            client.start("search.Idle", id="never", search=bad)
        assert repr(next(iter(bad))) in str(info.value)
    with pytest.raises(ValueError, match="memo"):
        client.start("search.Idle", id="never", memo={"x": object()})


def test_list_count_and_batch_refuse_bad_filters_before_reading():
    client = _offline()
    with pytest.raises(ValueError, match="unknown operator '~'"):
        client.list(search={"amount": ("~", 100)})
    with pytest.raises(ValueError, match="unknown operator"):
        client.count(search={"amount": ("like", "a%")})
    with pytest.raises(ValueError, match="'amount'.*dict"):
        client.list(search={"amount": ("=", {"a": 1})})
    with pytest.raises(ValueError, match="unknown status"):
        client.list(status="bogus")
    with pytest.raises(ValueError, match="unknown status"):
        client.count(status="bogus")
    for garbage in ("garbage", "eyJ2IjoxfQ", "!!!", ""):
        with pytest.raises(ValueError, match="invalid cursor"):
            client.list(cursor=garbage)
    with pytest.raises(ValueError, match="started_after"):
        client.list(started_after="yesterday")
    with pytest.raises(ValueError, match="reason is not for the 'resume' action"):
        client.batch("resume", reason="why")
    with pytest.raises(ValueError, match="signal and args are only for"):
        client.batch("pause", signal="poke")
    with pytest.raises(ValueError, match="unknown batch action"):
        client.batch("explode")
    with pytest.raises(ValueError, match="signal="):
        client.batch("signal")
    with pytest.raises(ValueError, match="unknown status"):
        client.batch("cancel", status="bogus")


def test_a_cursor_is_bound_to_its_query_and_refuses_edits():
    at = datetime(2030, 1, 1, tzinfo=UTC)
    cursor = encode_cursor(at, "wf-1", ["a"])
    assert decode_cursor(cursor, ["a"]) == (at, "wf-1")
    with pytest.raises(ValueError, match="invalid cursor"):
        decode_cursor(cursor, ["b"])  # another query's filters
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=="))
    payload["i"] = "wf-2"  # moved by hand, digest kept
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(ValueError, match="invalid cursor"):
        decode_cursor(forged, ["a"])


def test_filters_parse_from_text_as_the_cli_and_http_give_them():
    assert filters_from_text(["customer=c-7", "amount>100", "vip=true", "tier in a,b", "n<=2.5", "x!=1"]) == {
        "customer": ("=", "c-7"), "amount": (">", 100), "vip": ("=", True), "tier": ("in", ["a", "b"]),
        "n": ("<=", 2.5), "x": ("!=", 1),
    }
    assert parse_filters({"customer": "c-7", "when": (">", datetime(2030, 1, 1, tzinfo=UTC))}) == [
        ("customer", "=", "c-7"), ("when", ">", "2030-01-01T00:00:00+00:00"),
    ]
    with pytest.raises(ValueError, match="KEY OP VALUE"):
        filters_from_text(["just-a-word"])
