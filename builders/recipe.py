"""A builder folder's recipe: which source, conditioner, captioner and card settings it uses.

`builders/<name>/recipe.toml`:

    [source]       type = "hagrid"                  # plus source options
    [conditioner]  name = "hand_encoded"  options = {...}
    [captioner]    type = "template"  template = "a person making a {gesture:words} gesture"
    [image]        resize_short_side = 512          # optional: resize + centre-crop (re-encodes)
    [card]         pretty_name, license, tags, source_url, description
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILDERS_DIR = Path(__file__).resolve().parent
RECIPE_FILE = "recipe.toml"
CARD_TEMPLATE_FILE = "card_template.md"


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

    @property
    def resize_short_side(self) -> int | None:
        return self.image.get("resize_short_side")

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


def builder_names() -> list[str]:
    return sorted(p.parent.name for p in BUILDERS_DIR.glob(f"*/{RECIPE_FILE}"))


def resolve_builder(name_or_dir: str | Path) -> Path:
    """A builder name (its folder under builders/) or the path of a builder folder."""
    path = Path(name_or_dir)
    if (path / RECIPE_FILE).exists():
        return path
    if (BUILDERS_DIR / str(name_or_dir) / RECIPE_FILE).exists():
        return BUILDERS_DIR / str(name_or_dir)
    raise FileNotFoundError(
        f"no builder {str(name_or_dir)!r}: give a name ({', '.join(builder_names())}) or a builder folder"
    )
