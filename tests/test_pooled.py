"""PooledActor keeps pykka's actor guarantees without a thread per actor (no broker needed)."""

from __future__ import annotations

import threading
import time

import pykka
import pytest

from actors.node.pooled import POOL_THREADS, PooledActor


class _Recorder(PooledActor):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []
        self.inside = 0
        self.overlapped = False
        self.started = False
        self.stopped = False

    def on_start(self) -> None:
        self.started = True

    def on_stop(self) -> None:
        self.stopped = True

    def on_receive(self, message: object) -> object:
        self.inside += 1
        if self.inside > 1:
            self.overlapped = True
        time.sleep(0.0005)
        if message == "boom":
            self.inside -= 1
            raise ValueError("boom")
        self.seen.append(message)  # type: ignore[arg-type]
        self.inside -= 1
        return list(self.seen)


def test_messages_are_handled_one_at_a_time_in_order_and_replies_arrive() -> None:
    ref = _Recorder.start()
    senders = [threading.Thread(target=lambda base=b: [ref.tell(base + i) for i in range(50)]) for b in (0, 1000)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    seen = ref.ask(-1)
    actor = ref._actor_weakref()
    assert actor.started and not actor.overlapped
    assert [m for m in seen if m < 1000 and m >= 0] == list(range(50))  # each sender's order is kept
    assert [m for m in seen if m >= 1000] == list(range(1000, 1050))
    assert seen[-1] == -1
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom")  # an exception goes back to the asker; the actor lives on
    assert ref.ask(7)[-1] == 7
    ref.stop()
    assert actor.stopped and not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(8)


def test_a_thousand_idle_actors_cost_no_threads() -> None:
    before = threading.active_count()
    refs = [_Recorder.start() for _ in range(1000)]
    futures = [ref.ask(i, block=False) for i, ref in enumerate(refs)]
    assert [f.get(timeout=10)[-1] for f in futures] == list(range(1000))
    assert threading.active_count() <= before + POOL_THREADS
    for ref in refs:
        ref.stop(block=False)
    deadline = time.monotonic() + 10
    while any(ref.is_alive() for ref in refs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(ref.is_alive() for ref in refs)
