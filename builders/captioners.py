"""Captioners: `template`, `column`, `blip`, `none`. Each captions a batch of kept rows."""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from conditioners import Detection
from conditioners.errors import UnknownNameError

from .sources import SourceItem


@dataclass
class CaptionInput:
    item: SourceItem
    pixels: np.ndarray  # the upright RGB photo at detection resolution
    detection: Detection


class Captioner(ABC):
    #: how many rows the builder hands over at once
    batch_size: int = 1

    @abstractmethod
    def __call__(self, rows: list[CaptionInput]) -> list[str]: ...

    def describe(self) -> str:
        return type(self).__name__


class _WordsFormatter(string.Formatter):
    """`{gesture:words}` turns `two_up_inverted` into `two up inverted`."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "words":
            return str(value).replace("_", " ")
        return super().format_field(value, format_spec)


class TemplateCaptioner(Captioner):
    """`"a person making a {gesture:words} gesture"`: fields come from the source's columns,
    plus `caption` (the source caption) and `count` (number of detected instances)."""

    def __init__(self, template: str):
        self.template = template
        self._formatter = _WordsFormatter()

    def __call__(self, rows: list[CaptionInput]) -> list[str]:
        return [
            self._formatter.format(
                self.template,
                **row.item.extra,
                caption=row.item.caption or "",
                count=len(row.detection.instances),
            )
            for row in rows
        ]

    def describe(self) -> str:
        return f'template `"{self.template}"`'


class ColumnCaptioner(Captioner):
    """The source's own caption (img2dataset `.txt`, `metadata.jsonl`, a dataset column)."""

    def __init__(self, default: str = ""):
        self.default = default

    def __call__(self, rows: list[CaptionInput]) -> list[str]:
        return [row.item.caption if row.item.caption is not None else self.default for row in rows]

    def describe(self) -> str:
        return "the source's caption column"


class NoCaptioner(Captioner):
    def __call__(self, rows: list[CaptionInput]) -> list[str]:
        return ["" for _ in rows]

    def describe(self) -> str:
        return "none (empty captions)"


class BlipCaptioner(Captioner):
    """transformers BLIP image captioning, batched on CPU or GPU. Weights load from a local folder
    or the Hub (`Salesforce/blip-image-captioning-base`); remote code is never trusted."""

    def __init__(
        self,
        model: str = "Salesforce/blip-image-captioning-base",
        batch_size: int = 16,
        max_new_tokens: int = 30,
        prompt: str | None = None,
        device: str | None = None,
    ):
        self.model_name = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.device = device
        self._model = None
        self._processor = None

    def _load(self) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self._processor = BlipProcessor.from_pretrained(self.model_name, trust_remote_code=False)
        self._model = BlipForConditionalGeneration.from_pretrained(self.model_name, trust_remote_code=False)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(self.device).eval()

    def __call__(self, rows: list[CaptionInput]) -> list[str]:
        import torch

        if self._model is None:
            self._load()
        images = [row.pixels for row in rows]
        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self._processor(images=images, text=text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return [t.strip() for t in self._processor.batch_decode(tokens, skip_special_tokens=True)]

    def describe(self) -> str:
        return f"BLIP (`{self.model_name}`)"


CAPTIONERS: dict[str, type[Captioner]] = {
    "template": TemplateCaptioner,
    "column": ColumnCaptioner,
    "blip": BlipCaptioner,
    "none": NoCaptioner,
}


def make_captioner(kind: str, **options: Any) -> Captioner:
    if kind not in CAPTIONERS:
        raise UnknownNameError(f"unknown captioner {kind!r}; available: {', '.join(CAPTIONERS)}")
    return CAPTIONERS[kind](**options)
