"""A command produced to the wrong partition (a foreign producer with another partitioner) is re-routed to
the partition its workflow id maps to, so one workflow never splits across two partitions."""

from __future__ import annotations

from kafka import KafkaProducer
from prometheus_client import REGISTRY

from actors import WorkflowNotFound
from actors.client.sync import command_record
from eventstore import payloads
from eventstore.log import read_partition
from eventstore.topics import Topics, partition_for
from tests.apps import runtime_app as app
from tests.processes import wait_until
from tests.stack import running_stack

PARTITIONS = 4


def _keys_in(kafka: str, topic: str, partition: int) -> set[str]:
    """Keys of every record in one partition, read from the beginning."""
    records = read_partition(kafka, topic, partition, 0, None, "metamorph.EventEnvelope")
    return {envelope.get("workflow_id", "") for _offset, envelope in records}


def _status(handle) -> str | None:
    try:
        return handle.status()
    except WorkflowNotFound:  # not projected yet
        return None


def test_a_start_on_the_wrong_partition_is_rerouted_and_the_workflow_is_whole(kafka, pg_server, tmp_path):
    with running_stack(kafka, pg_server, tmp_path / "node", prefix="rr", partitions=PARTITIONS) as (client, _node, ns):
        wid = "rerouted-order-1"
        home = partition_for(wid, PARTITIONS)
        wrong = (home + 1) % PARTITIONS
        before = REGISTRY.get_sample_value("metamorph_rerouted_commands_total") or 0.0
        record = command_record("StartWorkflow", wid, f"start:{wid}", workflow_type=app.Signalled.name,
                                input=payloads.encode(["r"]))  # fmt: skip
        producer = KafkaProducer(bootstrap_servers=kafka)
        producer.send(Topics(ns).commands, key=wid.encode(), value=record, partition=wrong).get(timeout=30)
        producer.close()
        handle = client.get(wid)
        wait_until(lambda: _status(handle) == "waiting", 60, "the re-routed start to run")
        handle.signal("go", "now")  # the client sends this to the home partition, as everything else does
        assert handle.result(timeout=60) == "hello r/now"
        events = [e["type"] for e in handle.history()]
        assert events.count("WorkflowStarted") == 1 and "SignalReceived" in events
        # The invariant the re-route protects: a workflow's events live in its home partition only, where its
        # commands go and where any later owner restores it from.
        placed = {p: _keys_in(kafka, Topics(ns).events, p) for p in (home, wrong)}
        assert wid in placed[home] and wid not in placed[wrong], placed
        assert (REGISTRY.get_sample_value("metamorph_rerouted_commands_total") or 0.0) == before + 1
