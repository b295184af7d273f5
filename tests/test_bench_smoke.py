"""The benchmark runs in CI at tiny sizes, so it cannot rot: every workload, 1 rep, a few workflows each.

``python -m bench --quick`` runs as a subprocess (it starts its own embedded broker and PostgreSQL, a node and
a projector process); each JSON line it prints must be well formed, carry the keys the report needs, and
say that every result was correct.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_quick_benchmark_runs_every_workload_correctly(tmp_path: Path) -> None:
    out = tmp_path / "bench.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAMORPH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--idle-n", "20", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    by_workload = {r["workload"]: r for r in records}
    assert sorted(by_workload) == ["W1", "W2", "W3", "W4", "W5", "W6", "W7"]

    for r in records:
        assert r["peer"] == "metamorph" and r["ok"] is True and r["errors"] == [], r
        for key in ("workload_name", "activities_per_wf", "date", "host", "params", "versions", "resources", "elapsed_s"):
            assert key in r, (r["workload"], key)
        res = r["resources"]
        for role in ("node", "projector", "broker", "postgres", "client"):
            assert res["processes"][role]["hwm_rss_mb"] > 0 or res["processes"][role]["peak_rss_mb"] > 0, (r["workload"], role)
        assert res["worker_peak_rss_mb"] > 0 and res["server_peak_pss_mb"] > 0

    for w in ("W1", "W2", "W3", "W4"):
        lat, tp = by_workload[w]["latency"], by_workload[w]["throughput"]
        for key in ("p50_ms", "p95_ms", "p99_ms", "p50_ms_min", "p50_ms_max", "cpu_s", "runs"):
            assert key in lat, (w, key)
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
        assert tp["runs"][0]["completed"] == tp["n"] and tp["runs"][0]["errors"] == 0
        for key in ("wf_per_s", "act_per_s", "wall_s", "wf_per_s_min", "wf_per_s_max", "cpu_s"):
            assert key in tp, (w, key)
        assert tp["act_per_s"] == pytest.approx(tp["wf_per_s"] * by_workload[w]["activities_per_wf"])

    idle = by_workload["W5"]["idle"]
    assert idle["runs"][0]["n"] == 20 and "bytes_per_waiting_wf" in idle and idle["drain_s"] > 0
    restore = by_workload["W6"]["restore"]
    assert restore["restart_to_all_answering_s"] >= restore["restart_to_ready_s"] > 0
    replay = by_workload["W7"]["replay"]
    assert replay["history_events"] == 2 * by_workload["W7"]["params"]["activities"] + 1
    assert replay["events_per_s"] > 0

    assert "### Latency" in proc.stdout and "### W7 replay" in proc.stdout  # the Markdown table follows the lines
