"""One line describing the machine and versions, for benchmark and results tables."""

from __future__ import annotations

import os
import platform


def describe(threads: int | None = None) -> str:
    """CPU model, core count, versions and torch's intra-op threads (``threads`` overrides the
    count, for scripts whose measurements run in child processes)."""
    import lightning
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads or torch.get_num_threads()} threads), "
        f"lightning {lightning.__version__}, Python {platform.python_version()}"
    )
