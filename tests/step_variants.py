"""The model-option variants the train-step parity tests (SD and FLUX.1) run, and their memo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")


def variant_id(overrides: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in overrides.items()) or "default"


def once_per_variant(run: Callable[[Any, dict[str, Any]], Result]) -> Callable[[Any, dict[str, Any]], Result]:
    """`get(case, overrides)`: `run(case, overrides)`, computed once per case folder and variant, for
    every test that asks (a module-scoped fixture returns it)."""
    done: dict[tuple[Any, str], Result] = {}

    def get(case: Any, overrides: dict[str, Any]) -> Result:
        key = (case.folder, variant_id(overrides))
        if key not in done:
            done[key] = run(case, overrides)
        return done[key]

    return get
