"""Layer 3: a warning where bfloat16 precision would run emulated on the CPU.

``precision="bf16-mixed"`` (or ``"bf16-true"``) pays on a CPU only where it has bfloat16
instructions (AVX-512 BF16 or AMX): there the static-MNIST VAE's step ran up to 1.3x faster than
float32 (docs/BENCHMARKS_IMAGES.md, an AVX-512 EPYC with ``avx512_bf16``). On a CPU without them
(AVX2 only) torch converts every bfloat16 matmul to float32 and back, and the same step ran
6-9x *slower* than float32 (``python bench/images_vs_tf.py``, an AVX2 EPYC: 12.4 against 95.0
steps/s with the N(0, I) prior). Training still runs and is correct, so fit warns once, naming
the module and the alternative, rather than refusing.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["cpu_has_bf16_instructions", "warn_if_bf16_is_emulated"]


def cpu_has_bf16_instructions() -> bool | None:
    """Whether this CPU has AVX-512 BF16 or AMX instructions (``None`` where torch cannot say)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is None for check in checks):
        return None
    return any(check() for check in checks)


def warn_if_bf16_is_emulated(precision: str, device: torch.device, name: str) -> None:
    """Warn when a fit under a bfloat16 ``precision`` runs on a CPU without bfloat16 instructions."""
    if "bf16" not in precision or device.type != "cpu" or cpu_has_bf16_instructions() is not False:
        return
    rank_zero_warn(
        f"{name}: precision={precision!r} on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): "
        "torch emulates bfloat16 here, and a VAE's training step ran 6-9x slower than in float32 on such a "
        "CPU. Training continues; precision='32-true' is the fast choice on this machine."
    )
