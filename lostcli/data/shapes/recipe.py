"""The per-category recipe: record sampled parameters (`Draw`), state what a shape shows (`Facts`).

A category is a `Generator`: `sample(draw)` records JSON-serialisable parameters, `build(params)`
turns them into one manifold3d solid deterministically, and `describe(params, rng)` lists what the
geometry visibly shows, the raw material of its caption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from manifold3d import Manifold

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class Draw:
    """Samples parameters from an rng and records each under its key (floats rounded to 4 places)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def uniform(self, key: str, lo: float, hi: float) -> float:
        value = round(float(self.rng.uniform(lo, hi)), 4)
        self.params[key] = value
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both inclusive."""
        value = int(self.rng.integers(lo, hi + 1))
        self.params[key] = value
        return value

    def choice(self, key: str, options: Sequence[Any]) -> Any:
        value = options[int(self.rng.integers(len(options)))]
        self.params[key] = value
        return value

    def flag(self, key: str, p: float) -> bool:
        value = bool(self.rng.random() < p)
        self.params[key] = value
        return value

    def seed(self, key: str) -> int:
        """A sub-seed for layouts with many random parts (books, canopy blobs)."""
        value = int(self.rng.integers(2**31))
        self.params[key] = value
        return value


@dataclass
class Facts:
    """What a shape visibly shows, the raw material of its caption."""

    noun: str  # the category word or a synonym, e.g. "bar stool"
    adjectives: list[str]  # overall shape words, e.g. ["tall", "round"]
    features: list[str]  # visible parts, e.g. ["three legs", "a footrest ring"]


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One phrasing among equivalent ones."""
    return options[int(rng.integers(len(options)))]


def number(k: int) -> str:
    return NUMBER_WORDS[k] if 0 <= k < len(NUMBER_WORDS) else str(k)


@dataclass(frozen=True)
class Generator:
    """One category: sample parameters, build the solid, describe what it shows."""

    sample: Callable[[Draw], None]
    build: Callable[[dict], Manifold]
    describe: Callable[[dict, np.random.Generator], Facts]
