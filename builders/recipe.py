"""A builder folder's recipe: which source, conditioner, captioner and card settings it uses.

`builders/<name>/recipe.toml`:

    [source]       type = "hagrid"                  # plus source options
    [conditioner]  name = "hand_encoded"  options = {...}
    [captioner]    type = "template"  template = "a person making a {gesture:words} gesture"
    [image]        resize_short_side = 512          # optional: resize + crop (re-encodes as JPEG)
                   frame = "center"                 # or "hands" (needs resize_short_side)
                   hand_context = 2.5               # frame = "hands" only
                   min_side = 384                   # frame = "hands" only
    [card]         pretty_name, license, tags, source_url, description

`[image]` says which picture a row stores. Without `resize_short_side` the photo's own bytes. With
it, `frame = "center"` (the default) resizes the photo's short side to `resize_short_side` and cuts
the centred square. `frame = "hands"` detects on the whole photo first (at the conditioner's own
load, at full resolution), then cuts a square around all the hands found, one row per photo
(`framing.py` has the geometry): their union box widened `hand_context` times about its centre
(default 2.5), at least `min_side` pixels of the photo (default 3/4 of `resize_short_side`, 384 at
512, so a small hand is enlarged at most 4/3) and at most the photo's short side, shifted to stay in
the photo; hands too far apart for any square of the photo are kept in a rectangle of the photo's
whole short side and the hands' span (with context) along its long side. That crop is resized so
its short side is `resize_short_side`; the landmarks (the whole photo's detection, framed, with the
framing in their `extra.framing`), the conditioning image (drawn from them at the stored size) and
the size columns follow the same `Framing`.
"""

from __future__ import annotations

import sysconfig
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from conditioners.errors import UnknownNameError, UserError

BUILDERS_DIR = Path(__file__).resolve().parent
RECIPE_FILE = "recipe.toml"
CARD_TEMPLATE_FILE = "card_template.md"
PROJECT_NAME = "landmark-controlnet"
FRAMES = ("center", "hands")
IMAGE_KEYS = ("resize_short_side", "frame", "hand_context", "min_side")
DEFAULT_HAND_CONTEXT = 2.5
# `min_side` by default: a crop of at least 3/4 of the stored side, so hands grow at most 4/3.
DEFAULT_MIN_SIDE_FRACTION = 0.75


class RecipeError(UserError, ValueError):
    """A recipe.toml value a build cannot use; the message names the file, the option and the fix."""


@dataclass
class Recipe:
    name: str
    source: dict[str, Any]
    conditioner: dict[str, Any]
    captioner: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    image: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def source_type(self) -> str:
        return self.source["type"]

    @property
    def source_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.source.items() if k != "type"}

    @property
    def conditioner_name(self) -> str:
        return self.conditioner["name"]

    @property
    def conditioner_options(self) -> dict[str, Any]:
        return dict(self.conditioner.get("options", {}))

    @property
    def captioner_type(self) -> str:
        return self.captioner.get("type", "none")

    @property
    def captioner_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.captioner.items() if k != "type"}

    def __post_init__(self) -> None:
        self._check_image()

    @property
    def resize_short_side(self) -> int | None:
        return self.image.get("resize_short_side")

    @property
    def frame(self) -> str:
        """Where the stored picture is cut: "center" or "hands" (module docstring)."""
        return self.image.get("frame", "center")

    @property
    def hand_context(self) -> float:
        return float(self.image.get("hand_context", DEFAULT_HAND_CONTEXT))

    @property
    def min_side(self) -> int:
        if "min_side" in self.image:
            return int(self.image["min_side"])
        return round(DEFAULT_MIN_SIDE_FRACTION * (self.resize_short_side or 0))

    def _check_image(self) -> None:
        where = f"{self.folder / RECIPE_FILE if self.folder else self.name}: [image]"
        unknown = sorted(set(self.image) - set(IMAGE_KEYS))
        if unknown:
            raise RecipeError(f"{where} has no option {unknown[0]!r}; it takes {', '.join(IMAGE_KEYS)}")
        side = self.image.get("resize_short_side")
        if side is not None and not _positive_int(side):
            raise RecipeError(
                f"{where} resize_short_side = {side!r}: give a whole number of pixels, e.g. 512"
            )
        if self.frame not in FRAMES:
            raise RecipeError(f'{where} frame = {self.frame!r}: use "center" or "hands"')
        if self.frame == "hands" and side is None:
            raise RecipeError(
                f'{where} frame = "hands" needs resize_short_side (the stored crop\'s short side, e.g. 512)'
            )
        context = self.image.get("hand_context", DEFAULT_HAND_CONTEXT)
        if isinstance(context, bool) or not isinstance(context, int | float) or not context >= 1:
            raise RecipeError(
                f"{where} hand_context = {context!r}: give a number >= 1 (1 = the hands' box alone)"
            )
        min_side = self.image.get("min_side", 1)
        if not _positive_int(min_side):
            raise RecipeError(
                f"{where} min_side = {min_side!r}: give a whole number of source pixels, e.g. 384"
            )

    def card_template(self) -> str:
        if self.folder and (self.folder / CARD_TEMPLATE_FILE).exists():
            return (self.folder / CARD_TEMPLATE_FILE).read_text()
        return (BUILDERS_DIR / CARD_TEMPLATE_FILE).read_text()

    @classmethod
    def load(cls, folder: Path) -> Recipe:
        path = folder / RECIPE_FILE
        if not path.exists():
            raise FileNotFoundError(f"{folder} has no {RECIPE_FILE}: not a builder folder")
        data = tomllib.loads(path.read_text())
        return cls(
            name=data.get("name", folder.name),
            source=data["source"],
            conditioner=data["conditioner"],
            captioner=data.get("captioner", {"type": "none"}),
            image=data.get("image", {}),
            card=data.get("card", {}),
            folder=folder,
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def builder_names() -> list[str]:
    return sorted(p.parent.name for p in BUILDERS_DIR.glob(f"*/{RECIPE_FILE}"))


@cache
def in_checkout() -> bool:
    """True when this package is a repository checkout (editable or on sys.path), False when it is an
    installed copy: then its folder is site-packages, which builds must never write into."""
    pyproject = BUILDERS_DIR.parent / "pyproject.toml"
    if _inside_site_packages(BUILDERS_DIR) or not pyproject.is_file():
        return False
    try:
        return tomllib.loads(pyproject.read_text()).get("project", {}).get("name") == PROJECT_NAME
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _inside_site_packages(path: Path) -> bool:
    if {"site-packages", "dist-packages"} & set(path.parts):
        return True
    install_dirs = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return any(path.is_relative_to(Path(d).resolve()) for d in install_dirs)


def builds_dir() -> Path:
    """Where a packaged builder NAME builds by default: the checkout's builders/, else ./builders."""
    return BUILDERS_DIR if in_checkout() else Path.cwd() / "builders"


def is_packaged(folder: Path) -> bool:
    """A builder folder that ships inside this package (and is read-only for an installed copy)."""
    return folder.resolve().parent == BUILDERS_DIR


def default_output(recipe_folder: Path) -> Path:
    """A build's folder when no --output is given: the recipe folder itself, except for a packaged
    recipe of an installed copy, which builds into ./builders/<name> (getting a copy of the recipe)."""
    if is_packaged(recipe_folder) and not in_checkout():
        return builds_dir() / recipe_folder.resolve().name
    return recipe_folder


class UnknownBuilderError(UnknownNameError, FileNotFoundError):
    """Neither a builder folder nor a builder name (a FileNotFoundError too, for older callers)."""


def resolve_builder(name_or_dir: str | Path) -> Path:
    """A builder folder's path, or a builder name: for an installed copy ./builders/<name> once a
    build has put its recipe there, else the packaged recipe folder."""
    path = Path(name_or_dir)
    if (path / RECIPE_FILE).exists():
        return path
    for folder in dict.fromkeys([builds_dir() / str(name_or_dir), BUILDERS_DIR / str(name_or_dir)]):
        if (folder / RECIPE_FILE).exists():
            return folder
    raise UnknownBuilderError(
        f"no builder {str(name_or_dir)!r}: give a name ({', '.join(builder_names())}) or a builder folder"
    )
