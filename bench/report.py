"""Markdown tables from benchmark JSON lines, Metamorph's alone or side by side with the peer harness's.

    python -m bench.report OURS.jsonl [PEERS.jsonl ...]     # tables, three-way comparison, targets
    python -m bench.report OURS.jsonl dbos-embedded-pg=DBOS.jsonl   # NAME=FILE renames the engine of its lines

Values are the median over reps with the (min-max) spread in brackets, as in the peer harness's tables.
"""

from __future__ import annotations

import json
import sys
from typing import Any

BASIC = ("W1", "W2", "W3", "W4")
ORDER = ["metamorph", "temporal", "temporal-mem", "temporal-tuned", "dbos", "dbos-embedded-pg", "dbos-queue"]


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def rng(d: dict | None, k: str, nd: int = 1) -> str:
    if not d or k not in d:
        return "–"
    lo, hi = d.get(k + "_min"), d.get(k + "_max")
    if lo is None or hi is None or lo == hi:
        return fmt(d[k], nd)
    return f"{fmt(d[k], nd)} ({fmt(lo, nd)}–{fmt(hi, nd)})"


def _last(records: list[dict]) -> list[dict]:
    """The last record per (peer, workload, max_live): a re-run replaces the earlier line."""
    last: dict = {}
    for r in records:
        last[(r.get("peer"), r.get("workload"), (r.get("params") or {}).get("max_live_workflows") if r.get("workload") == "W5" else None)] = r
    return sorted(last.values(), key=lambda r: (ORDER.index(r["peer"]) if r["peer"] in ORDER else 99, r["workload"]))


def _ok(r: dict) -> str:
    return "yes" if r.get("ok") else "NO: " + "; ".join(r.get("errors", []))[:100]


def basic_tables(records: list[dict]) -> str:
    recs = [r for r in _last(records) if r.get("workload") in BASIC]
    if not recs:
        return ""
    out = ["### Latency (ms, start → result, one workflow at a time; median of reps (min–max))", "",
           "| engine | workload | p50 | p95 | p99 | n×reps |", "|---|---|---|---|---|---|"]
    for r in recs:
        lat = r.get("latency") or {}
        out.append(f"| {r['peer']} | {r['workload']} {r['workload_name']} | {rng(lat, 'p50_ms')} | {rng(lat, 'p95_ms')} | "
                   f"{rng(lat, 'p99_ms')} | {lat.get('n', '–')}×{r['params'].get('reps', '–')} |")
    out += ["", "### Throughput (N started, ≤ 50 start(+signal) calls in flight, all results awaited; median (min–max))", "",
            "| engine | workload | N | workflows/s | activities/s | wall s |", "|---|---|---|---|---|---|"]
    for r in recs:
        tp = r.get("throughput") or {}
        out.append(f"| {r['peer']} | {r['workload']} {r['workload_name']} | {tp.get('n', '–')} | {rng(tp, 'wf_per_s')} | "
                   f"{rng(tp, 'act_per_s')} | {rng(tp, 'wall_s', 2)} |")
    out += ["", "### Resources (peak over the run; CPU-s = median of one throughput rep)", "",
            "| engine | workload | server PSS MB (RSS sum) | worker/node RSS MB | projector RSS MB | client RSS MB | "
            "CPU-s by process (throughput rep) | CPU-s per 1k activities | ok |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        res = r.get("resources") or {}
        tp = r.get("throughput") or {}
        cpu = tp.get("cpu_s") or {}
        acts = (tp.get("n") or 0) * r.get("activities_per_wf", 1)
        total = sum(v for k, v in cpu.items() if k != "server") if r["peer"] == "metamorph" else sum(cpu.values())
        per_k = 1000 * total / acts if acts and cpu else None
        client = "(in worker)" if res.get("client_in_worker") else fmt(res.get("client_peak_rss_mb"))
        cpus = " / ".join(f"{k} {fmt(v)}" for k, v in cpu.items())
        out.append(f"| {r['peer']} | {r['workload']} | {fmt(res.get('server_peak_pss_mb'))} ({fmt(res.get('server_peak_rss_mb'))}) | "
                   f"{fmt(res.get('worker_peak_rss_mb'))} | {fmt(res.get('projector_peak_rss_mb'))} | {client} | {cpus} | "
                   f"{fmt(per_k, 2)} | {_ok(r)} |")
    return "\n".join(out)


def extra_tables(records: list[dict]) -> str:
    recs = _last(records)
    out: list[str] = []
    idle = [r for r in recs if r.get("workload") == "W5"]
    if idle:
        out += ["### W5 idle: node RSS per waiting workflow, then signal all and drain", "",
                "| max live actors | waiting wf | bytes per waiting wf | node RSS before → after MB | start → all waiting s "
                "| signal all → all completed s | drained wf/s | reps | ok |", "|---|---|---|---|---|---|---|---|---|"]
        for r in idle:
            i = r.get("idle") or {}
            out.append(f"| {r['params'].get('max_live_workflows')} | {r['params'].get('n')} | {rng(i, 'bytes_per_waiting_wf', 0)} | "
                       f"{fmt(i.get('rss_before_mb'))} → {fmt(i.get('rss_after_mb'))} | {rng(i, 'start_to_all_waiting_s', 2)} | "
                       f"{rng(i, 'drain_s', 2)} | {rng(i, 'drained_wf_per_s')} | {r['params'].get('reps')} | {_ok(r)} |")
        out.append("")
    restore = [r for r in recs if r.get("workload") == "W6"]
    if restore:
        out += ["### W6 restore: kill -9 the node with N waiting workflows, restart, until all answer a query", "",
                "| waiting wf | restart → node ready s | → first answer s | → half answering s | → all answering s | "
                "kill → all answering s | reps | ok |", "|---|---|---|---|---|---|---|---|"]
        for r in restore:
            x = r.get("restore") or {}
            out.append(f"| {r['params'].get('n')} | {rng(x, 'restart_to_ready_s', 2)} | {rng(x, 'restart_to_first_answer_s', 2)} | "
                       f"{rng(x, 'restart_to_half_answering_s', 2)} | {rng(x, 'restart_to_all_answering_s', 2)} | "
                       f"{rng(x, 'kill_to_all_answering_s', 2)} | {r['params'].get('reps')} | {_ok(r)} |")
        out.append("")
    replay = [r for r in recs if r.get("workload") == "W7"]
    if replay:
        out += ["### W7 replay: a passivated workflow's history replayed (WorkflowInstance.load)", "",
                "| history events | events/s replayed | ms per load (first load) | query, passivated ms | query, live ms | "
                "time to record the history s | ok |", "|---|---|---|---|---|---|---|"]
        for r in replay:
            x = r.get("replay") or {}
            out.append(f"| {x.get('history_events', '–')} | {rng(x, 'events_per_s', 0)} | {fmt(x.get('load_ms'))} "
                       f"({fmt(x.get('first_load_ms'))}) | {fmt(x.get('passivated_query_ms'))} | {fmt(x.get('live_query_ms'))} | "
                       f"{fmt(x.get('record_history_s'), 2)} | {_ok(r)} |")
    return "\n".join(out)


def render(records: list[dict]) -> str:
    parts = [basic_tables(records), extra_tables(records)]
    return "\n\n".join(p for p in parts if p)


def targets(records: list[dict]) -> list[dict]:
    """The issue's targets, checked against the peers present in ``records`` (same machine, same sitting)."""
    recs = _last(records)
    ours = {r["workload"]: r for r in recs if r["peer"] == "metamorph"}
    peers = [r for r in recs if r["peer"] != "metamorph" and r["workload"] in BASIC]

    def peer_best(workload: str, section: str, key: str, higher: bool) -> tuple[float | None, str | None]:
        vals = [((r.get(section) or {}).get(key), r["peer"]) for r in peers if r["workload"] == workload]
        vals = [v for v in vals if v[0] is not None]
        if not vals:
            return None, None
        return (max if higher else min)(vals)

    def ours_val(workload: str, section: str, key: str) -> float | None:
        return ((ours.get(workload) or {}).get(section) or {}).get(key)

    out = []
    best, who = peer_best("W1", "throughput", "wf_per_s", True)
    v = ours_val("W1", "throughput", "wf_per_s")
    out.append({"target": "W1 throughput ≥ 2× the better peer", "ours": v, "goal": None if best is None else 2 * best,
                "peer": who, "met": None if v is None or best is None else v >= 2 * best, "unit": "wf/s"})
    best, who = peer_best("W1", "latency", "p50_ms", False)
    v = ours_val("W1", "latency", "p50_ms")
    out.append({"target": "W1 p50 ≤ half the better peer's", "ours": v, "goal": None if best is None else best / 2,
                "peer": who, "met": None if v is None or best is None else v <= best / 2, "unit": "ms"})
    v = ours_val("W2", "latency", "p50_ms")
    out.append({"target": "W2 p50 < 60 ms", "ours": v, "goal": 60.0, "peer": None, "met": None if v is None else v < 60, "unit": "ms"})
    for w in ("W3", "W4"):
        best_t, who_t = peer_best(w, "throughput", "wf_per_s", True)
        best_l, who_l = peer_best(w, "latency", "p50_ms", False)
        vt, vl = ours_val(w, "throughput", "wf_per_s"), ours_val(w, "latency", "p50_ms")
        out.append({"target": f"{w} throughput ahead of both peers", "ours": vt, "goal": best_t, "peer": who_t,
                    "met": None if vt is None or best_t is None else vt > best_t, "unit": "wf/s"})
        out.append({"target": f"{w} p50 latency ahead of both peers", "ours": vl, "goal": best_l, "peer": who_l,
                    "met": None if vl is None or best_l is None else vl < best_l, "unit": "ms"})
    idle = [r for r in recs if r["peer"] == "metamorph" and r["workload"] == "W5"]
    default = next((r for r in idle if r["params"].get("max_live_workflows") == 1000), idle[0] if idle else None)
    v = ((default or {}).get("idle") or {}).get("bytes_per_waiting_wf")
    out.append({"target": f"W5 < 2 KiB RSS per waiting workflow (max live {default['params'].get('max_live_workflows') if default else '?'})",
                "ours": v, "goal": 2048.0, "peer": None, "met": None if v is None else v < 2048, "unit": "B"})
    v = ((ours.get("W6") or {}).get("restore") or {}).get("restart_to_all_answering_s")
    out.append({"target": "W6 restart → all answering queries < 10 s", "ours": v, "goal": 10.0, "peer": None,
                "met": None if v is None else v < 10, "unit": "s"})
    return out


def targets_table(records: list[dict]) -> str:
    rows = ["| target | Metamorph | goal | met |", "|---|---|---|---|"]
    for t in targets(records):
        peer = f" ({t['peer']})" if t["peer"] else ""
        met = "–" if t["met"] is None else ("**yes**" if t["met"] else "**no**")
        rows.append(f"| {t['target']} | {fmt(t['ours'])} {t['unit']} | {fmt(t['goal'])} {t['unit']}{peer} | {met} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    records: list[dict] = []
    for arg in args:
        name, _, path = arg.rpartition("=") if "=" in arg else ("", "", arg)
        with open(path) as fh:
            lines = [json.loads(line) for line in fh if line.strip()]
        for r in lines:
            if name:
                r["peer"] = name
        records += lines
    print(render(records))
    print("\n### Targets\n")
    print(targets_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
