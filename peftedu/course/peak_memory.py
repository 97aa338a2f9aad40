"""Measuring memory: what a function really used, to hold the estimates against.

CUDA: the allocator's exact peak of live tensors. CPU: the process RSS sampled by a background thread (with
its honest limits, listed in :func:`measure_peak_memory`). MPS: the allocated memory, sampled the same way.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .models import pick_device


def _rss_bytes() -> int | None:
    """Resident set size of this process now: /proc/self/statm (Linux), else psutil, else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: not a dependency, used when /proc is missing

        return psutil.Process().memory_info().rss
    except Exception:
        return None


def _maxrss_bytes() -> int:
    """Lifetime peak RSS from getrusage (KiB on Linux, bytes on macOS)."""
    import resource  # POSIX only: imported where it is used, so the module still loads on Windows

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class PeakMemory:
    """What :func:`measure_peak_memory` saw: the function's result and its memory peak above baseline."""

    result: Any
    peak_bytes: int
    baseline_bytes: int
    device: str
    method: str

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 1e6

    def __str__(self) -> str:
        return f"peak {self.peak_mb:,.1f} MB above a baseline of {self.baseline_bytes / 1e6:,.1f} MB on {self.device} ({self.method})"


def measure_peak_memory(fn: Callable, *args, device=None, interval_s: float = 0.001, **kwargs) -> PeakMemory:
    """Run ``fn(*args, **kwargs)`` and report how far memory rose above where it started.

    * CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated`` -- exact bytes of
      live tensors (not the allocator's cached blocks, not the CUDA context).
    * CPU: a background thread samples the process RSS (``/proc/self/statm``, else psutil) every
      ``interval_s``; peak minus the RSS before the call. Honest limits: RSS counts everything the
      process holds, including memory the allocator caches and pages touched by other threads;
      a spike shorter than the sampling interval can be missed; freed memory glibc keeps (small
      allocations) is not seen as new. Without /proc and psutil, ``getrusage``'s lifetime peak is
      used, which only shows a rise above the largest peak seen so far.
    * MPS: samples ``torch.mps.current_allocated_memory()`` the same way.
    """
    dev = pick_device(device)
    if dev.type == "meta":
        raise ValueError("The meta device holds no memory; measure on 'cpu', 'cuda' or 'mps'.")
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}.")

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)
        result = fn(*args, **kwargs)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - baseline
        return PeakMemory(result, max(peak, 0), baseline, str(dev), "torch.cuda.max_memory_allocated")

    if dev.type == "mps":
        sample, method = torch.mps.current_allocated_memory, "sampled torch.mps.current_allocated_memory"
    elif _rss_bytes() is not None:
        sample, method = _rss_bytes, "sampled process RSS"
    else:
        baseline = _maxrss_bytes()
        result = fn(*args, **kwargs)
        return PeakMemory(result, max(_maxrss_bytes() - baseline, 0), baseline, str(dev),
                          "getrusage ru_maxrss (lifetime peak; rises only above earlier peaks)")

    baseline = sample()
    peak = [baseline]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], sample())
            time.sleep(interval_s)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        result = fn(*args, **kwargs)
        peak[0] = max(peak[0], sample())  # the state right at return (result still alive)
    finally:
        stop.set()
        thread.join()
    return PeakMemory(result, max(peak[0] - baseline, 0), baseline, str(dev), method)


__all__ = ["PeakMemory", "measure_peak_memory"]
