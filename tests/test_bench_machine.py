"""bench/machine.py's line for tables: the CPU model, the vector instructions torch dispatches to and
whether the CPU has bfloat16 instructions, read from a given /proc/cpuinfo."""

import builtins
import io
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from machine import describe  # noqa: E402

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx avx2 {extra}\n\nprocessor\t: 1\n"


def _with_cpuinfo(monkeypatch, text: str) -> str:
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return io.StringIO(text) if str(path) == "/proc/cpuinfo" else real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    return describe(threads=3)


@pytest.mark.parametrize("extra, bf16", [("", False), ("avx512f avx512_bf16", True), ("amx_bf16", True)])
def test_describe_names_the_cpu_its_kernels_and_bf16(monkeypatch, extra, bf16):
    line = _with_cpuinfo(monkeypatch, CPUINFO.format(extra=extra))
    capability = torch.backends.cpu.get_cpu_capability()
    assert line.startswith(f"Some CPU 9000 ({capability}{', bf16' if bf16 else ''}), ")
    assert "(3 threads)" in line and f"torch {torch.__version__}" in line


def test_describe_without_cpuinfo(monkeypatch):
    real_open = builtins.open

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    line = describe()
    assert f"({torch.backends.cpu.get_cpu_capability()})" in line and "bf16" not in line
