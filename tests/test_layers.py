"""The floors of docs/architecture.md: each imports only the floors below it (read from the source, so a
lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPLICATION = ("cli", "demo", "condition", "generate", "refine_hands", "studio", "loaded")
# floor (a package folder) -> the project modules it must never import, by dotted prefix
FORBIDDEN = {
    "conditioners": ("builders", "landmark_controlnet"),
    "builders": ("landmark_controlnet", "jax", "flax"),
    "landmark_controlnet/diffusion": (
        "builders",
        *(f"landmark_controlnet.{name}" for name in ("training", "evaluation", *APPLICATION)),
    ),
    "landmark_controlnet/training": tuple(f"landmark_controlnet.{name}" for name in APPLICATION),
    "landmark_controlnet/evaluation": tuple(
        f"landmark_controlnet.{name}" for name in ("training", *APPLICATION)
    ),
}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module `path` imports, relative imports resolved against its package."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_each_floor_imports_only_the_floors_below(floor):
    offending = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / floor).rglob("*.py"))
        for name in sorted(imported_modules(path))
        if any(name == banned or name.startswith(f"{banned}.") for banned in FORBIDDEN[floor])
    ]
    assert not offending, "\n".join(offending)


def test_the_rule_sees_lazy_and_relative_imports(tmp_path):
    # the check must be able to fail: imports from training into the application floor
    probe = tmp_path / "landmark_controlnet" / "training" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from ..studio import api\n\ndef f():\n    from landmark_controlnet.cli import main\n")
    names = imported_modules(probe, tmp_path)
    assert {"landmark_controlnet.studio.api", "landmark_controlnet.cli.main"} <= names
