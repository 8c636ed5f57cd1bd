"""Every notebook under notebooks/ runs top to bottom (nbclient, small settings) so it cannot rot.

Each notebook reads ``EIM_NOTEBOOK_SMOKE=1`` and shrinks its settings; the test sets it, runs the
kernel in ``notebooks/`` with one thread, and fails on any cell error. Notebooks that take more
than about 10 s are in the slow tier; one cheap notebook stays in the fast tier (DESIGN.md, Tests).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: the notebook kept in the fast tier: the cheapest (about 14 s on 2 loaded cores, most of it kernel
#: start-up and imports; 01_toy2d and 03_unifications take about 17 s)
FAST = {"04_extend.ipynb"}


def test_there_are_notebooks_and_each_reads_the_smoke_switch():
    assert NOTEBOOKS, "no notebooks under notebooks/"
    for path in NOTEBOOKS:
        assert "EIM_NOTEBOOK_SMOKE" in path.read_text(), f"{path.name} ignores EIM_NOTEBOOK_SMOKE"


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=p.name, marks=() if p.name in FAST else pytest.mark.slow) for p in NOTEBOOKS]
)
def test_notebook_executes_with_small_settings(path, monkeypatch):
    monkeypatch.setenv("EIM_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors, errors
