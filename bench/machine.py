"""One line describing the machine and versions, for benchmark and results tables."""

from __future__ import annotations

import os
import platform


def describe(threads: int | None = None) -> str:
    """CPU model, the vector instructions torch's kernels use on it, whether it has bfloat16
    instructions, core count, versions and torch's intra-op threads (``threads`` overrides the
    count, for scripts whose measurements run in child processes).

    The machines a session is lent differ: AVX-512 with ``avx512_bf16`` on some days, AVX2 only
    on others, where float32 elementwise kernels run several times slower and bf16 autocast has
    no native instructions; a table's figures are read against its line."""
    import lightning
    import torch

    from eim_lightning.modules.precision import cpu_has_bf16_instructions

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    bf16 = ", bf16" if cpu_has_bf16_instructions() else ""
    cpu += f" ({torch.backends.cpu.get_cpu_capability()}{bf16})"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads or torch.get_num_threads()} threads), "
        f"lightning {lightning.__version__}, Python {platform.python_version()}"
    )
