"""Parsing of SparseZoo ``zoo:`` stubs (pure: no I/O, no torch).

Two forms exist in the wild::

    zoo:domain/sub_domain/architecture[-sub_arch]/framework/repo/dataset[-training_scheme]/sparse_name-sparse_category[-target]
    zoo:architecture[-sub_arch]-dataset-sparse_tag                       (the short form)

Either may end in query parameters ``?recipe_type=NAME`` / ``?recipe=NAME`` joined with ``&``.
Every component is restricted to ``[A-Za-z0-9_.]`` (plus ``-`` where the grammar allows it), so a
stub can be used as a folder name under a zoo root and can never escape it (no ``..``, no ``/``
at the start, no backslashes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from sparsify.errors import StubError, did_you_mean

PREFIX = "zoo:"
QUERY_KEYS = ("recipe_type", "recipe")
_PART = re.compile(r"^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*$")

GRAMMAR = (
    "zoo:domain/sub_domain/architecture[-sub_arch]/framework/repo/dataset[-training_scheme]/"
    "sparse_name-sparse_category[-target] (long form) or zoo:architecture-dataset-sparse_tag "
    "(short form), optionally followed by ?recipe_type=NAME"
)


@dataclass(frozen=True)
class Stub:
    """A parsed ``zoo:`` stub.

    ``path`` is the stub without ``zoo:`` and without query parameters; ``str(stub)`` gives the
    stub back exactly as parsed (query keys in their given order).
    """

    path: str
    long_form: bool
    domain: str | None = None
    sub_domain: str | None = None
    architecture: str = ""
    sub_architecture: str | None = None
    framework: str | None = None
    repo: str | None = None
    dataset: str = ""
    training_scheme: str | None = None
    sparse_name: str = ""
    sparse_category: str | None = None
    sparse_target: str | None = None
    query: tuple[tuple[str, str], ...] = field(default=())

    def __str__(self) -> str:
        text = PREFIX + self.path
        if self.query:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.query)
        return text

    @property
    def recipe_name(self) -> str | None:
        """The recipe named by ``?recipe=`` or ``?recipe_type=`` (``None`` for the default)."""
        values = dict(self.query)
        return values.get("recipe") or values.get("recipe_type")

    @property
    def without_query(self) -> str:
        """The stub with its query parameters removed (the model's identity)."""
        return PREFIX + self.path

    @property
    def folder_name(self) -> str:
        """Relative folder for this stub under a zoo root (safe: components are validated)."""
        return self.path

    @property
    def sparse_tag(self) -> str:
        """``sparse_name-sparse_category[-target]`` (long form) or the short form's last part."""
        parts = [self.sparse_name, self.sparse_category, self.sparse_target]
        return "-".join(p for p in parts if p)


def is_stub(text: str) -> bool:
    """Whether ``text`` is meant as a zoo stub (starts with ``zoo:``)."""
    return isinstance(text, str) and text.strip().lower().startswith(PREFIX)


def _bad(stub: str, why: str) -> StubError:
    return StubError(
        f"Malformed zoo stub '{stub}': {why}.",
        hint=f"Expected {GRAMMAR}. Example: "
        "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned95_quant-none",
    )


def _split_first(text: str) -> tuple[str, str | None]:
    head, sep, tail = text.partition("-")
    return head, (tail if sep else None)


def parse_stub(text: str) -> Stub:
    """Parse a ``zoo:`` stub in either form.

    Raises:
        StubError: not a stub, a component is empty or holds forbidden characters (path
            traversal included), the long form has the wrong number of parts, or an unknown
            query key is given.
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw.lower().startswith(PREFIX):
        raise _bad(str(text), "it must start with 'zoo:'")
    body = raw[len(PREFIX):]
    body, _, query_text = body.partition("?")
    query: list[tuple[str, str]] = []
    if query_text:
        for key, value in parse_qsl(query_text, keep_blank_values=True, strict_parsing=False):
            if key not in QUERY_KEYS:
                raise _bad(raw, f"unknown query parameter '{key}'{did_you_mean(key, QUERY_KEYS)}"
                           f" (valid: {', '.join(QUERY_KEYS)})")
            if not value or not re.fullmatch(r"[A-Za-z0-9_.\-]+", value) or ".." in value:
                raise _bad(raw, f"query parameter '{key}' needs a plain name, got '{value}'")
            query.append((key, value))
        if not query:
            raise _bad(raw, "empty query after '?'")
    if not body:
        raise _bad(raw, "nothing after 'zoo:'")
    if "\\" in body or body.startswith("/") or body.endswith("/"):
        raise _bad(raw, "it must be a relative name without leading or trailing '/' or '\\'")

    parts = body.split("/")
    for part in parts:
        if part in ("", ".", "..") or ".." in part or not _PART.match(part):
            raise _bad(raw, f"component '{part}' is empty or holds characters other than "
                            "letters, digits, '_', '.' and single '-'")

    if len(parts) == 7:
        domain, sub_domain, arch, framework, repo, dataset, tag = parts
        architecture, sub_arch = _split_first(arch)
        dataset_name, scheme = _split_first(dataset)
        sparse_name, rest = _split_first(tag)
        category, target = _split_first(rest) if rest else (None, None)
        return Stub(body, True, domain, sub_domain, architecture, sub_arch, framework, repo,
                    dataset_name, scheme, sparse_name, category, target, tuple(query))
    if len(parts) == 1:
        pieces = body.split("-")
        if len(pieces) < 3:
            raise _bad(raw, "the short form needs at least architecture-dataset-sparse_tag")
        architecture, *sub = pieces[:-2]
        return Stub(body, False, architecture=architecture,
                    sub_architecture="-".join(sub) or None, dataset=pieces[-2],
                    sparse_name=pieces[-1], query=tuple(query))
    raise _bad(raw, f"the long form has 7 '/'-separated parts, this one has {len(parts)}")
