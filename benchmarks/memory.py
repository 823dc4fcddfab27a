"""Memory of a process and everything it started (Ray's GCS, raylet and actors included), sampled from
/proc (Linux): the peak of the summed PSS (each shared page split between the processes sharing it, so
the sum is what the tree really holds; torch's libraries are shared by every actor) and of the summed
RSS (shared pages counted once per process: an upper bound)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def _kb(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    found = dict.fromkeys(fields, 0)
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in found:
                found[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


@dataclass
class TreeMemory:
    """`with TreeMemory(pid) as memory:` samples the tree every `every_s`; then memory.peak_pss_mb etc."""
    root: int = field(default_factory=os.getpid)
    every_s: float = 0.5
    peak_pss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_processes: int = 0
    loads: list[float] = field(default_factory=list)  # the machine's 1-minute load average, each sample
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = descendants(self.root)
        sizes = [_kb(pid, ("Pss", "Rss")) for pid in pids]
        self.peak_pss_mb = max(self.peak_pss_mb, sum(s["Pss"] for s in sizes) / 1024)
        self.peak_rss_mb = max(self.peak_rss_mb, sum(s["Rss"] for s in sizes) / 1024)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.loads.append(os.getloadavg()[0])

    @property
    def mean_load(self) -> float:
        """How busy the machine was meanwhile (other jobs included): the mean 1-minute load average."""
        return sum(self.loads) / len(self.loads) if self.loads else float("nan")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> "TreeMemory":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def watch_command(argv: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
                  log: Path | None = None) -> tuple[int, float, TreeMemory]:
    """Run a command to its end: (exit code, wall seconds, the memory of its process tree)."""
    import subprocess

    out = open(log, "w") if log is not None else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        with TreeMemory(process.pid) as memory:
            code = process.wait()
        return code, time.perf_counter() - start, memory
    finally:
        if log is not None:
            out.close()
