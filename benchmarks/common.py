"""What every benchmark shares: the machine it ran on, how busy the machine was besides the
measured work (this box is shared, and other work there slows a measurement), and writing the
results file."""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored


def machine(*packages: str) -> dict[str, Any]:
    """CPUs, CPU model, memory, Python, platform, load average, and the versions of
    ``packages`` (import names)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": os.getloadavg(),
        **{name: importlib.import_module(name).__version__ for name in packages},
    }


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    t = psutil.cpu_times()
    # guest time is already inside user time; steal and iowait are not work done here
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def rusage_cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user + system) of this process, or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(fn, *args) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` in this process; its result plus wall seconds, cores it used, and the cores
    other processes kept busy meanwhile (well above 0: the figure is pessimistic)."""
    busy, own, start = busy_cpu_s(), rusage_cpu_s(), time.perf_counter()
    result = fn(*args)
    wall = time.perf_counter() - start
    own = rusage_cpu_s() - own
    other = max(0.0, busy_cpu_s() - busy - own)
    return result, {"wall_s": wall, "cores_used": own / wall, "other_load_cores": other / wall}


class OtherLoad:
    """Cores used by processes outside this one's tree while it runs (sampled every second),
    for work that spreads over processes this one did not wait for (Ray workers)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _others(self) -> dict[int, float]:
        mine = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)}
        times = {}
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            if proc.info["pid"] not in mine and proc.info["cpu_times"] is not None:
                times[proc.info["pid"]] = sum(proc.info["cpu_times"][:2])
        return times

    def _run(self) -> None:
        before, at = self._others(), time.perf_counter()
        while not self._stop.wait(1.0):
            now, now_at = self._others(), time.perf_counter()
            used = sum(t - before.get(pid, t) for pid, t in now.items())
            self.samples.append(used / (now_at - at))
            before, at = now, now_at

    def __enter__(self) -> OtherLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else 0.0


def write_results(path: Path | str, results: dict[str, Any]) -> Path:
    """``results`` as indented JSON at ``path`` (parents made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path
