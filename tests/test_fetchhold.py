"""eventstore.fetchhold: an empty fetch is held on the client side, so an idle consumer does not spin on a
broker that answers empty fetches at once (noida-db); records still arrive. On Apache Kafka, which holds
empty fetches itself, the bound holds trivially. Also guards the one private kafka-python seam it uses."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from eventstore import groups
from eventstore.fetchhold import hold_empty_fetches
from eventstore.log import producer
from eventstore.topics import admin


def test_an_idle_consumer_sends_at_most_one_fetch_per_hold_and_still_gets_records(kafka):
    topic = f"hold-{uuid.uuid4().hex[:8]}"
    adm = admin(kafka)
    adm.create_topics([NewTopic(topic, 1, 1)])
    adm.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, fetch_max_wait_ms=500)
    try:
        assert hold_empty_fetches(consumer, 20), "kafka-python's fetcher seam is gone: see eventstore/fetchhold.py"
        fetcher = consumer._fetcher
        sent = []
        create = fetcher._create_fetch_requests

        def counting() -> dict:
            requests = create()
            sent.extend(requests)
            return requests

        fetcher._create_fetch_requests = counting
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        consumer.position(tp)
        sent.clear()
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            assert consumer.poll(timeout_ms=100) == {}
        assert len(sent) <= 1000 / 20 * 1.5 + 5, f"{len(sent)} fetches in 1 s while idle"
        prod = producer(kafka)
        try:
            prod.send(topic, key=b"k", value=b"v", partition=0)
            prod.flush()
        finally:
            prod.close(5)
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = [r.value for rs in consumer.poll(timeout_ms=200).values() for r in rs]
        assert got == [b"v"]
    finally:
        consumer.close()


def test_group_members_hold_empty_fetches_by_default(kafka):
    consumer = groups.member(kafka, None, None)
    try:
        assert "_send_fetches_async" in vars(consumer._fetcher)  # the held variant, bound on the instance
    finally:
        consumer.close()
