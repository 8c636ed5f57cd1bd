"""The layer import directions of DESIGN.md: imports point down only; data knows no model."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "eim_lightning"

LAYER1 = {"ops", "bounds", "integrators", "smc", "kalman"}
LAYER2 = {"nn", "densities", "optim"}
LAYER3 = {"modules"}
LAYER4 = {"cli", "callbacks", "demo", "__main__"}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for level, names in enumerate((LAYER1, LAYER2, LAYER3, LAYER4), start=1):
        if top in names:
            return level
    raise AssertionError(f"eim_lightning.{module} is in no layer; add it to tests/test_layers.py")


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
                out |= set(names)
            else:
                out.add(node.module)
    return out


def _package_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1]) if parts[-1] != "__init__" else ".".join(parts[:-1])


SOURCES = sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PKG)) for p in SOURCES])
def test_eim_lightning_imports_point_down(path):
    rel = path.relative_to(PKG).with_suffix("")
    own = ".".join(rel.parts)
    own_level = _layer(own if rel.parts[-1] != "__init__" else ".".join(rel.parts[:-1]))
    for name in _imports(path, _package_of(path)):
        if name.startswith("eim_lightning."):
            target = name[len("eim_lightning.") :]
            assert _layer(target) <= own_level, f"{own} (layer {own_level}) imports {name}"
        if own_level <= 2:
            assert not name.startswith(("lightning", "pytorch_lightning", "torchmetrics")), f"{own} imports {name}"
        if own_level < 4:
            assert not name.startswith("datamodules"), f"{own} imports {name}"
        if own_level == 1:
            assert name.split(".")[0] in {
                "torch",
                "math",
                "typing",
                "collections",
                "__future__",
                "eim_lightning",
                "dataclasses",
            }, f"layer-1 {own} imports {name}"


def test_datamodules_know_no_model():
    for path in sorted((REPO / "datamodules").rglob("*.py")):
        for name in _imports(path, _package_of(path)):
            assert not name.startswith("eim_lightning"), f"{path.name} imports {name}"


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bounds.py"
    bad.write_text("from .modules import SNIS\nfrom . import cli\nimport lightning\n")
    names = _imports(bad, "eim_lightning")
    assert names == {"eim_lightning.modules", "eim_lightning.cli", "lightning"}
    assert _layer("modules") > _layer("bounds") and _layer("cli") > _layer("modules")
