"""The one reconnect policy every process uses (eventstore/backoff.py)."""

import pytest

from eventstore.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_small_after_a_reset() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.peek() == 3.0
    b.reset()
    assert b.next() == 0.5


@pytest.mark.parametrize(("first", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_a_nonsensical_policy_is_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < first <= cap"):
        Backoff(first, cap)
