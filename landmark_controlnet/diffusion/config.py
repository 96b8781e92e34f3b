"""Typed model configs read from (and written back to) diffusers' and transformers' `config.json`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from conditioners.errors import UserError

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


class UnsupportedConfigError(UserError):
    """The config asks for a variant of the architecture this project does not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fields are config.json keys. Keys a subclass does not model are kept in `extra` and written back.

    `unsupported` maps a key to the values it may take (its defaults); any other value raises, so that a
    checkpoint of an architecture we do not implement fails loudly instead of loading into a wrong model.
    """

    class_name: ClassVar[str] = ""
    unsupported: ClassVar[Mapping[str, tuple[Any, ...]]] = {}

    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any], source: str = "config") -> ConfigT:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key, allowed in cls.unsupported.items():
            if key in values and values[key] not in allowed:
                raise UnsupportedConfigError(
                    f"{source}: {key}={values[key]!r} is not supported (supported: {list(allowed)})"
                )
        known = {k: _freeze(v) for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls: type[ConfigT], path: Path) -> ConfigT:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in self.extra.items() if not k.startswith("_")}
        if self.class_name:
            values["_class_name"] = self.class_name
        for field in dataclasses.fields(self):
            if field.name != "extra":
                values[field.name] = _thaw(getattr(self, field.name))
        return values

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        return dataclasses.replace(self, **changes)


def per_block(value: Any, blocks: int) -> tuple:
    """diffusers lets many keys be one value or one per block; always give one per block."""
    if isinstance(value, list | tuple):
        if len(value) != blocks:
            raise UnsupportedConfigError(f"expected {blocks} values, one per block, got {list(value)}")
        return tuple(value)
    return (value,) * blocks


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value
