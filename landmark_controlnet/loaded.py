"""Detectors and models kept loaded between requests.

A command loads what it needs and exits; a long-lived caller (Landmark ControlNet Studio) keeps one
`Loaded` for the life of its process, so that each detector is built once and each base model and
ControlNet is read (and its sampler compiled) once. JAX is imported only when a model is first asked
for. Each entry is used by one request at a time (detectors and samplers keep state).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import conditioners


class Loaded:
    def __init__(self) -> None:
        self._guard = threading.Lock()  # guards the tables; each entry has its own lock
        self._entries: dict[tuple, tuple[threading.Lock, Any]] = {}

    @contextmanager
    def detector(self, name: str, options: dict[str, Any]) -> Iterator[conditioners.Conditioner]:
        """The conditioner `name` with `options`, as `conditioners.get` builds it, built once."""
        key = ("detector", name, json.dumps(options, sort_keys=True))
        with self._use(key, lambda: conditioners.get(name, **options).__enter__()) as conditioner:
            yield conditioner

    @contextmanager
    def base_model(self, location: str) -> Iterator[Any]:
        """The base model at `location` (a folder or Hub id), loaded once: Stable Diffusion (SDXL) or
        FLUX.1, as `evaluation.generate.load_base` reads it."""
        from landmark_controlnet.evaluation.generate import load_base

        with self._use(("base", location), lambda: load_base(location)) as model:
            yield model

    stable_diffusion = base_model  # its name before FLUX.1 bases

    @contextmanager
    def sampler(
        self, model: Any, base: str, controlnet: str, steps: int, guidance_scale: float
    ) -> Iterator[Any]:
        """(sampler, ControlNet parameters) for the base `model` (loaded from `base`), built once per
        ControlNet and sampler settings (`controlnet_sampler`); the sampler keeps its compiled step."""
        from landmark_controlnet.evaluation.generate import controlnet_sampler

        key = ("sampler", base, controlnet, steps, guidance_scale)
        with self._use(key, lambda: controlnet_sampler(model, controlnet, steps, guidance_scale)) as pair:
            yield pair

    def close(self) -> None:
        """Close every detector (their native resources); models are only memory."""
        with self._guard:
            entries, self._entries = self._entries, {}
        for key, (lock, value) in entries.items():
            if key[0] == "detector":
                with lock:
                    value.__exit__(None, None, None)

    @contextmanager
    def _use(self, key: tuple, build: Any) -> Iterator[Any]:
        with self._guard:
            if key not in self._entries:
                self._entries[key] = (threading.Lock(), None)
            lock, _ = self._entries[key]
        with lock:  # a second request for the same entry waits, then finds it built
            value = self._entries[key][1]
            if value is None:
                value = build()
                with self._guard:
                    self._entries[key] = (lock, value)
            yield value
