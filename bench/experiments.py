"""Opt-in what-if patches for experiments, never on by default: they exist to measure a cost, not to hide it.

``METAMORPH_BENCH_EMPTY_FETCH_SLEEP_MS=N``: after a consumer poll step that returned no records, sleep N ms.
The embedded broker (noida-db 0.2.3) answers an empty fetch at once instead of holding it for
``fetch_max_wait_ms``, and kafka-python 3.0 then fetches again at once, so every idle consumer spins at
about 1,000 fetches/s and one CPU core (see RESULTS.md). A real Kafka broker holds the fetch; this patch
approximates that (at the price of up to N ms per hop) so the benchmark can show what the spin costs.
Applied by ``bench.node_process``, ``bench.projector_process`` and the runner (the client's consumer) when set.
"""

from __future__ import annotations

import os
import time


def apply_from_env() -> dict:
    applied: dict = {}
    ms = float(os.environ.get("METAMORPH_BENCH_EMPTY_FETCH_SLEEP_MS") or 0)
    if ms > 0:
        import kafka.consumer.fetcher as fetcher

        original = fetcher.Fetcher.fetch_records
        if not getattr(original, "_bench_patched", False):

            def fetch_records(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                result = original(self, *args, **kwargs)
                if not result[0]:
                    time.sleep(ms / 1000)
                return result

            fetch_records._bench_patched = True  # type: ignore[attr-defined]
            fetcher.Fetcher.fetch_records = fetch_records  # type: ignore[method-assign]
        applied["empty_fetch_sleep_ms"] = ms
    return applied
