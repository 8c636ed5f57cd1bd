"""bench/machine.py's line for tables: the CPU model (from /proc/cpuinfo), the vector instructions torch
dispatches to and whether the CPU has bfloat16 instructions (the library's own check)."""

import builtins
import io
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from machine import describe  # noqa: E402

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx avx2\n\nprocessor\t: 1\n"


def _cpu(monkeypatch, avx512_bf16: bool, amx: bool, cpuinfo: str | None = CPUINFO) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if str(path) != "/proc/cpuinfo":
            return real_open(path, *args, **kwargs)
        if cpuinfo is None:
            raise OSError("no /proc here")
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.parametrize("avx512_bf16, amx, bf16", [(False, False, False), (True, False, True), (False, True, True)])
def test_describe_names_the_cpu_its_kernels_and_bf16(monkeypatch, avx512_bf16, amx, bf16):
    _cpu(monkeypatch, avx512_bf16, amx)
    line = describe(threads=3)
    capability = torch.backends.cpu.get_cpu_capability()
    assert line.startswith(f"Some CPU 9000 ({capability}{', bf16' if bf16 else ''}), ")
    assert "(3 threads)" in line and f"torch {torch.__version__}" in line


def test_describe_without_cpuinfo(monkeypatch):
    _cpu(monkeypatch, False, False, cpuinfo=None)
    line = describe()
    assert f"({torch.backends.cpu.get_cpu_capability()})" in line and "bf16" not in line
