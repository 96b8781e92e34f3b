"""The wheel works outside the repository: it ships its data files, and an installed copy builds into
./builders/<name> under the working directory, never into site-packages.

One wheel is built and installed into one fresh venv. That venv sees the project venv's
site-packages (the dependencies) through a plain-path .pth line, which does not run the project
venv's own .pth files, so the editable install's finder stays out and imports come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import builder_fixtures as fx
import datasets
import pytest
from PIL import Image

import conditioners

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("conditioners", "builders", "landmark_controlnet")
BUILDER = "hagrid_hand_enc"


def _ignore_build_outputs(folder: str, names: list[str]) -> set[str]:
    """Caches, hidden files and what a build leaves in a checkout's builder folder: not sources."""
    ignored = {n for n in names if n == "__pycache__" or n.startswith(".") or n.endswith(".egg-info")}
    if "recipe.toml" in names:
        ignored |= {"data", "README.md"} & set(names)
    return ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` on a copy of the sources, so that the build leaves nothing in the checkout."""
    src = tmp_path_factory.mktemp("wheel_src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=_ignore_build_outputs)
    dist = tmp_path_factory.mktemp("dist")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-w", dist, src], check=True)
    (built,) = dist.glob("landmark_controlnet-*.whl")
    return built


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


class FreshVenv:
    def __init__(self, root: Path, home: Path):
        self.root = root
        self.home = home  # a working directory outside the repository
        self.python = root / "bin" / "python"
        self.cli = root / "bin" / "landmark-controlnet"
        self.site_packages = Path(self.query("import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        self.installed_files: dict[str, tuple[int, int]] = {}  # site-packages right after the install

    def query(self, code: str) -> str:
        result = subprocess.run(
            [self.python, "-c", code], cwd=self.home, env=_clean_env(), capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def run_cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = _clean_env(HF_DATASETS_CACHE=str(self.home / "hf_datasets_cache"))
        return subprocess.run(
            [self.cli, *args], cwd=cwd or self.home, env=env, capture_output=True, text=True, timeout=900
        )


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> FreshVenv:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    home = tmp_path_factory.mktemp("home")
    assert not home.is_relative_to(REPO)
    subprocess.run([sys.executable, "-m", "venv", root], check=True)
    venv = FreshVenv(root, home)
    dependency_dirs = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (venv.site_packages / "project_venv_dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")
    install = [venv.python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel]
    subprocess.run(install, check=True, env=_clean_env())
    imports = ", ".join(PACKAGES)
    files = ", ".join(f"{name}.__file__" for name in PACKAGES)
    locations = json.loads(venv.query(f"import json, {imports}; print(json.dumps([{files}]))"))
    for location in locations:  # the wheel's copies, not the editable checkout
        assert Path(location).is_relative_to(venv.site_packages), location
    venv.installed_files = _files(venv.site_packages)
    return venv


def test_wheel_ships_recipes_card_template_and_demo_photos(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(REPO.glob("builders/*/recipe.toml"))
    assert recipes
    for path in recipes:
        assert path.relative_to(REPO).as_posix() in names
    assert "builders/card_template.md" in names
    demo_photos = sorted(
        p.relative_to(REPO).as_posix()
        for suffix in ("jpg", "md")
        for p in REPO.glob(f"landmark_controlnet/demo_photos/*.{suffix}")
    )
    assert any(p.endswith(".jpg") for p in demo_photos) and any(p.endswith(".md") for p in demo_photos)
    assert set(demo_photos) <= names


def test_installed_wheel_builds_into_the_working_directory(fresh_venv, data_dir, tmp_path):
    source = fx.hagrid(data_dir, tmp_path, v2=True)
    work = tmp_path / "work"
    work.mkdir()
    result = fresh_venv.run_cli("build", BUILDER, "--source", str(source), cwd=work)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    out = work / "builders" / BUILDER
    assert report["output"] == str(out) and report["rows"] >= 2
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == ["train-00000.parquet"]
    packaged = fresh_venv.site_packages / "builders" / BUILDER
    assert (out / "recipe.toml").read_bytes() == (packaged / "recipe.toml").read_bytes()
    assert (out / "README.md").exists()
    assert _files(fresh_venv.site_packages) == fresh_venv.installed_files

    dataset = datasets.load_dataset(str(out), split="train")
    assert len(dataset) == report["rows"]
    for row in dataset:
        assert isinstance(row["image"], Image.Image) and row["image"].size == row["conditioning_image"].size
        assert row["caption"] == f"a person making a {row['gesture'].replace('_', ' ')} gesture"
        detection = conditioners.Detection.from_json(row["landmarks"])
        assert detection.instances and detection.size == row["image"].size

    shown = fresh_venv.run_cli("show", BUILDER, cwd=work)  # a name finds ./builders/<name>
    assert shown.returncode == 0, shown.stderr
    assert f"train: {report['rows']} rows" in shown.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    unbuilt = fresh_venv.run_cli("show", BUILDER, cwd=elsewhere)
    assert unbuilt.returncode == 2 and "Traceback" not in unbuilt.stderr
    assert f"{elsewhere / 'builders' / BUILDER} has no data yet" in unbuilt.stderr


def _paths_in(report: object) -> list[Path]:
    if isinstance(report, dict):
        return [p for value in report.values() for p in _paths_in(value)]
    if isinstance(report, list):
        return [p for value in report for p in _paths_in(value)]
    return [Path(report)] if isinstance(report, str) and os.path.isabs(report) else []


def test_installed_wheel_runs_the_demo(fresh_venv, tmp_path):
    """The demo's conditioners, shipped photos and dataset build, from the wheel. Without its tiny
    training run: test_cli's demo trains (minutes of JIT compiling); here it is enough that every
    training module ships and imports from the wheel."""
    out_dir = tmp_path / "demo"
    result = fresh_venv.run_cli("demo", "--no-train", "--out-dir", str(out_dir))
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    paths = _paths_in(report)
    assert out_dir / "contact_sheet.png" in paths
    for path in paths:
        if path.is_relative_to(out_dir):
            assert path.exists(), path
    assert report["dataset"]["rows"] > 0 and "training" not in report
    assert _files(fresh_venv.site_packages) == fresh_venv.installed_files


def test_installed_wheel_ships_every_training_module(fresh_venv):
    package = "landmark_controlnet.training"
    source_modules = sorted(p.stem for p in (REPO / package.replace(".", "/")).glob("*.py"))
    imported = json.loads(
        fresh_venv.query(
            f"import importlib, json, pkgutil, {package} as p; "
            "names = sorted(m.name for m in pkgutil.iter_modules(p.__path__)); "
            f"print(json.dumps({{n: importlib.import_module('{package}.' + n).__file__ for n in names}}))"
        )
    )
    assert sorted(["__init__", *imported]) == source_modules
    for location in imported.values():
        assert Path(location).is_relative_to(fresh_venv.site_packages), location


def test_a_checkout_builds_packaged_builders_in_place(tmp_path, monkeypatch):
    """In the repository, `builders/<name>/` stays the build folder, whatever the working directory."""
    from builders.recipe import BUILDERS_DIR, default_output, in_checkout, resolve_builder

    assert in_checkout() == (BUILDERS_DIR.parent == REPO)
    monkeypatch.chdir(tmp_path)
    packaged = resolve_builder(BUILDER)
    assert packaged == BUILDERS_DIR / BUILDER
    assert default_output(packaged) == (packaged if in_checkout() else tmp_path / "builders" / BUILDER)
    user_recipe = fx.folder_recipe(tmp_path)
    assert default_output(resolve_builder(str(user_recipe))) == user_recipe
