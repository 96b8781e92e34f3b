"""Parsing of `--option KEY=VALUE`, `--size WxH` and `--profile_steps A:B` arguments."""

from __future__ import annotations

import argparse
import json
from typing import Any, NoReturn


def parse_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true/false, null), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x512, got {text!r}")
    return size


def parse_step_range(text: str) -> range | None:
    """`A:B`: steps A up to, not including, B, with 0 <= A < B. A plain count `N` means `1:1+N`: N steps
    after the first, as the flag's older form did; `0` means none (None)."""
    first, sep, last = text.partition(":")
    try:
        start, stop = (int(first), int(last)) if sep else (1, 1 + int(first))
    except ValueError:
        start = stop = -1
    if start < 0 or stop < start or (sep and stop == start):
        raise argparse.ArgumentTypeError(f"expected A:B with 0 <= A < B, or a count N >= 0, got {text!r}")
    return range(start, stop) or None


def options_dict(pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    return dict(pairs or [])


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr, exit 2: the usage block that
    argparse prints first would bury the message (`--help` still shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (--help lists the flags)\n")
