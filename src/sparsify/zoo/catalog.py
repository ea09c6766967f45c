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
SOURCE_TYPES = ("torchvision", "hf", "ultralytics", "url")


@dataclass(frozen=True)
class Source:
    """A remote place the weights can come from.

    Attributes:
        type: ``hf`` (Hugging Face Hub repo id), ``torchvision`` (model builder + weights enum
            member), ``ultralytics`` (weight file name), ``url`` (any file or archive).
        name: repo id, builder name, weight file name, or the local file name for ``url``.
        weights: torchvision weights enum member (``IMAGENET1K_V2``).
        file: the file name the weights are cached under (torchvision: the torch hub name,
            whose part after the last ``-`` is a SHA-256 prefix).
        url: where the file is downloaded from (torchvision, ultralytics, url).
        sha256: expected SHA-256 (or a prefix) of the downloaded file.
        size: expected size in bytes.
        revision: Hub revision (branch, tag or commit); default ``main``.
    """

    type: str
    name: str
    weights: str | None = None
    file: str | None = None
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    revision: str | None = None

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
    recipe: str | None = None
    zoo_recipe: str | None = None
    note: str | None = None


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
                    recipe=entry.get("recipe"), zoo_recipe=entry.get("zoo_recipe"),
                    note=entry.get("note"),
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


def entries(family: str | None = None) -> list[CatalogEntry]:
    """Every entry (of ``family`` when given), in file order."""
    return [e for e in load_catalog().values() if family is None or e.family == family]


def _stub_key(text: str) -> str:
    return text.strip().split("?", 1)[0].lower()


def find_entries_by_stub(stub: str) -> list[CatalogEntry]:
    """Catalog entries whose stub is ``stub`` (query parameters and case ignored).

    Detection and segmentation share no stubs, but a stub may in principle appear under two
    families; every match is returned, in file order.
    """
    key = _stub_key(stub)
    return [e for e in load_catalog().values() if _stub_key(e.stub) == key]


def find_entries_by_source(source_type: str, name: str) -> list[CatalogEntry]:
    """Catalog entries with a source of ``source_type`` named ``name`` (a Hub id, a weight
    name)."""
    return [e for e in load_catalog().values()
            if any(s.type == source_type and s.name.lower() == name.lower() for s in e.sources)]
