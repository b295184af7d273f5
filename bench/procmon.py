"""Memory and CPU of the benchmark's processes, read from /proc (Linux only, no extra dependency).

Each role (``node``, ``projector``, ``broker``, ``postgres``, ``client``...) has root pids; with ``tree`` its
descendants count too (PostgreSQL's backends). A background thread samples every ``interval`` seconds:

* ``peak_rss_mb``: the highest summed VmRSS over the role's processes seen in a sample;
* ``peak_pss_mb``: the same for PSS (shared pages divided among their sharers; the honest sum for Postgres);
* ``hwm_rss_mb``: the kernel's VmHWM (exact lifetime peak RSS) of the role's root processes, summed; the
  largest value seen, so a process that was killed and replaced keeps its peak;
* CPU seconds (user + system) per role from snapshots (``cpu()``); a process that exited keeps its last value.

This mirrors ``harness/procmon.py`` of the peer harness, so the numbers are comparable.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

_TICKS = os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    """Current resident set size (VmRSS) in KiB; 0 if the process is gone."""
    return _status_kb(pid, "VmRSS:")


def hwm_kb(pid: int) -> int:
    """Peak resident set size (VmHWM) in KiB; 0 if the process is gone."""
    return _status_kb(pid, "VmHWM:")


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                data = fh.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2 :].split()[1])
        kids[ppid].append(int(entry))
    return kids


class Monitor:
    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._roots: dict[str, list[int]] = {}
        self._tree: dict[str, bool] = {}
        self._peak_rss: dict[str, int] = {}
        self._peak_pss: dict[str, int] = {}
        self._hwm: dict[str, int] = {}
        self._nproc: dict[str, int] = {}
        self._cpu: dict[str, dict[int, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, role: str, pid: int | None, tree: bool = False) -> None:
        if pid is None:
            return
        with self._lock:
            self._roots.setdefault(role, []).append(pid)
            self._tree[role] = self._tree.get(role, False) or tree
            for table in (self._peak_rss, self._peak_pss, self._hwm, self._nproc):
                table.setdefault(role, 0)
            self._cpu.setdefault(role, {})
        self.sample()

    def replace(self, role: str, pid: int) -> None:
        """A role's process was restarted: keep its peaks and CPU so far, follow the new pid from now on."""
        self.sample()
        with self._lock:
            self._roots[role] = [pid]
        self.sample()

    def _pids(self, role: str, kids: dict[int, list[int]] | None) -> list[int]:
        pids = list(self._roots.get(role, []))
        if self._tree.get(role) and kids is not None:
            todo = list(pids)
            while todo:
                for child in kids.get(todo.pop(), ()):
                    pids.append(child)
                    todo.append(child)
        return [p for p in pids if os.path.exists(f"/proc/{p}")]

    def sample(self, with_pss: bool = True) -> None:
        with self._lock:
            kids = _children() if any(self._tree.values()) else None
            for role in self._roots:
                pids = self._pids(role, kids)
                rss = pss = 0
                for pid in pids:
                    rss += rss_kb(pid)
                    if with_pss:
                        pss += pss_kb(pid)
                    cpu = cpu_seconds(pid)
                    if cpu is not None:
                        self._cpu[role][pid] = cpu
                self._peak_rss[role] = max(self._peak_rss[role], rss)
                if with_pss:
                    self._peak_pss[role] = max(self._peak_pss[role], pss)
                self._nproc[role] = max(self._nproc[role], len(pids))
                self._hwm[role] = max(self._hwm[role], sum(hwm_kb(p) for p in self._roots[role]))

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per role (a fresh snapshot)."""
        self.sample(with_pss=False)
        with self._lock:
            return {role: sum(v.values()) for role, v in self._cpu.items()}

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, name="bench-procmon", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # a process vanishing mid-sample is not worth dying for
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.sample()
        except Exception:
            pass

    def summary(self) -> dict[str, dict]:
        mb = 1024.0
        with self._lock:
            return {
                role: {
                    "peak_rss_mb": round(self._peak_rss[role] / mb, 1),
                    "peak_pss_mb": round(self._peak_pss[role] / mb, 1),
                    "hwm_rss_mb": round(self._hwm[role] / mb, 1),
                    "processes_peak": self._nproc[role],
                }
                for role in self._roots
            }


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in after}


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
