"""The model catalog (``data/catalog.yaml``): family x tier x variant -> stub, sparsity, sources.

Pure apart from reading the packaged data file once; no torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import yaml

TIERS = ("largest", "medium", "smallest")
VARIANTS = ("dense", "sparse")
SOURCE_TYPES = ("torchvision", "hf", "ultralytics")


@dataclass(frozen=True)
class Source:
    """A remote place the weights can come from."""

    type: str
    name: str
    weights: str | None = None

    def __str__(self) -> str:
        suffix = f" ({self.weights})" if self.weights else ""
        return f"{self.type}:{self.name}{suffix}"


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the catalog."""

    family: str
    tier: str
    variant: str
    stub: str
    architecture: str
    sparsity: float
    sources: tuple[Source, ...]
    fallback: str | None = None


@functools.cache
def load_catalog() -> dict[tuple[str, str, str], CatalogEntry]:
    """Read the packaged catalog, keyed by ``(family, tier, variant)``."""
    text = resources.files("sparsify").joinpath("data/catalog.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    table: dict[tuple[str, str, str], CatalogEntry] = {}
    for family, tiers in raw.items():
        for tier, variants in tiers.items():
            for variant, entry in variants.items():
                sources = tuple(Source(**s) for s in entry.get("sources") or ())
                table[family, tier, variant] = CatalogEntry(
                    family=family, tier=tier, variant=variant, stub=entry["stub"],
                    architecture=entry["architecture"], sparsity=float(entry["sparsity"]),
                    sources=sources, fallback=entry.get("fallback"),
                )
    return table


def catalog_entry(family: str, tier: str, variant: str) -> CatalogEntry:
    """The entry for ``family``/``tier``/``variant`` (internal: the names come from the plan)."""
    return load_catalog()[family, tier, variant]


def families() -> list[str]:
    """Every family in the catalog, in file order."""
    seen: dict[str, None] = {}
    for family, _, _ in load_catalog():
        seen.setdefault(family)
    return list(seen)
