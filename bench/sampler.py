"""A wall-clock sampling profiler for a daemon's threads (py-spy is not in Debian 12).

Every `interval` seconds a background thread takes each thread's stack (sys._current_frames)
and counts its innermost frames; at exit the counts go to `out`, per thread group (the thread
name without its number), most frequent first. Waiting shows up as well as running: a thread
blocked in a lock, fsync or a socket is counted where it waits, which is what a latency hunt
needs (cProfile sees the main thread only and CPU and waiting alike as call time).

    python3 -c "import sampler; sampler.start('/tmp/out.txt', gate='/tmp/on'); ...the daemon..."
"""
from __future__ import annotations

import atexit
import collections
import os
import re
import sys
import threading
import time

_DIGITS = re.compile(r"_\d+$|-\d+$|\d+$")


def _where(frame, depth: int) -> str:
    parts = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        parts.append(f"{os.path.basename(code.co_filename)}:{code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return " < ".join(parts)


def start(out: str, interval: float = 0.002, depth: int = 4, gate: str | None = None) -> None:
    """Sample until exit; with `gate`, only while that file exists (the measured phase)."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    stop = threading.Event()

    def run() -> None:
        me = threading.get_ident()
        while not stop.wait(interval):
            if gate is not None and not os.path.exists(gate):
                continue
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    group = _DIGITS.sub("", names.get(ident, "?"))
                    counts[group][_where(frame, depth)] += 1

    def dump() -> None:
        stop.set()
        with open(out, "w") as fh:
            fh.write(f"# samples every {interval * 1000:g} ms, {time.strftime('%H:%M:%S')}\n")
            for group, c in sorted(counts.items()):
                total = sum(c.values())
                fh.write(f"\n== {group}: {total} samples\n")
                for where, n in c.most_common(25):
                    fh.write(f"{n:7d} {100 * n / total:5.1f}%  {where}\n")

    threading.Thread(target=run, name="sampler", daemon=True).start()
    atexit.register(dump)
