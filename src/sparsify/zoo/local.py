"""Models on this machine: local zoo folders and an existing SparseZoo cache.

Light (the standard library and PyYAML; torch only inside ``register_model``'s checkpoint check):
the CLI uses this for ``--dry-run`` and ``sparsify.zoo list`` to say where a model would come from.

A local zoo folder holds one folder per stub, at ``<root>/<stub path>``, laid out like a SparseZoo
download::

    <root>/cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned95_quant-none/
        training/model.pth          (or a Hugging Face model folder's files, or a YOLO .pt)
        deployment/model.onnx       (optional)
        recipe/recipe.md            (optional; recipe_<name>.md for ?recipe=<name>)
        model.onnx                  (optional)
        sparsify-zoo.yaml           (written by `sparsify.zoo add`: the stub and the origin)

A SparseZoo cache (``SPARSEZOO_MODELS_PATH`` or ``~/.cache/sparsezoo``) holds the same layout
under a model id (``<cache>/<uuid>/`` or ``<cache>/<namespace>/<name>/``); a folder is matched to
a stub by what its files record: the stub itself, or the fields of ``model.md``'s front matter.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sparsify.errors import ModelNotFoundError, UsageError
from sparsify.zoo.stub import PREFIX, Stub, is_stub, parse_stub

logger = logging.getLogger(__name__)

ENV_ZOO_PATH = "SPARSIFY_ZOO_PATH"
ENV_SPARSEZOO_PATH = "SPARSEZOO_MODELS_PATH"
MARKER = "sparsify-zoo.yaml"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")
_STUB_TEXT = re.compile(r"zoo:[A-Za-z0-9_./\-]+")
_TEXT_FILES = (".md", ".json", ".yaml", ".yml", ".txt")
_MAX_TEXT = 1 << 20


def zoo_roots() -> list[Path]:
    """Local zoo folders, from ``SPARSIFY_ZOO_PATH`` (``os.pathsep``-separated) or the default
    ``~/.cache/sparsify/zoo``."""
    value = os.environ.get(ENV_ZOO_PATH)
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [cache / "sparsify" / "zoo"]


def sparsezoo_root() -> Path:
    """The SparseZoo cache: ``SPARSEZOO_MODELS_PATH`` or ``~/.cache/sparsezoo``."""
    value = os.environ.get(ENV_SPARSEZOO_PATH)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "sparsezoo"


def looks_like_model_folder(folder: Path) -> bool:
    """A folder with ``training/``, ``deployment/`` or ``model.onnx``."""
    return ((folder / "training").is_dir() or (folder / "deployment").is_dir()
            or (folder / "model.onnx").is_file())


def _inside(root: Path, folder: Path) -> bool:
    try:
        folder.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def local_zoo_folder(stub: Stub, root: Path | None = None) -> Path:
    """Where ``stub`` lives under ``root`` (the first zoo root by default).

    Raises:
        UsageError: the folder would resolve outside the root (a symlink pointing away; the stub
            grammar itself already refuses ``..`` and absolute paths).
    """
    root = root or zoo_roots()[0]
    folder = root / stub.folder_name
    parent = folder.parent
    while not parent.exists() and parent != root:
        parent = parent.parent
    if parent.exists() and root.exists() and not _inside(root, parent):
        raise UsageError(f"{folder} resolves outside the zoo folder {root}; refusing it.")
    return folder


def find_in_local_zoo(stub: Stub) -> Path | None:
    """The first local zoo folder that holds ``stub``, or ``None``.

    A folder counts when it has a ``training/`` or ``deployment/`` folder or a ``model.onnx``.
    """
    for root in zoo_roots():
        folder = root / stub.folder_name
        if looks_like_model_folder(folder):
            return folder
    return None


# --- SparseZoo cache --------------------------------------------------------------------------

def _front_matter(text: str) -> dict:
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines[:400]) if line.strip() == "---"]
    if len(marks) < 2 or marks[0] != 0:
        return {}
    try:
        data = yaml.safe_load("\n".join(lines[1:marks[1]]))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def stub_from_card(card: dict) -> str | None:
    """The long-form stub that ``model.md``'s front matter describes, if it names one.

    Uses an explicit ``stub`` field, else the stub's components (``domain``, ``sub_domain``,
    ``architecture``, ``sub_architecture``, ``framework``, ``repo``, ``dataset`` /
    ``source_dataset``, ``training_scheme``, ``sparse_tag`` or ``sparse_name`` +
    ``sparse_category`` + ``sparse_target``).
    """
    for key in ("stub", "zoo_stub", "model_stub"):
        value = card.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip() if is_stub(value) else PREFIX + value.strip()

    def get(*keys: str) -> str | None:
        # "none" is a real value of sparse_category ("base-none") but means "absent" for the
        # optional sub_architecture / training_scheme / sparse_target
        for key in keys:
            value = card.get(key)
            if value is None or str(value).strip() == "":
                continue
            if str(value).strip().lower() == "none" and key != "sparse_category":
                continue
            return str(value).strip()
        return None

    domain, sub_domain = get("domain"), get("sub_domain")
    arch, framework, repo = get("architecture"), get("framework"), get("repo")
    dataset = get("dataset", "source_dataset")
    tag = get("sparse_tag")
    if not tag and get("sparse_name"):
        tag = "-".join(v for v in (get("sparse_name"), get("sparse_category"),
                                   get("sparse_target")) if v)
    if not all((domain, sub_domain, arch, framework, repo, dataset, tag)):
        return None
    if get("sub_architecture"):
        arch = f"{arch}-{get('sub_architecture')}"
    if get("training_scheme"):
        dataset = f"{dataset}-{get('training_scheme')}"
    return f"{PREFIX}{domain}/{sub_domain}/{arch}/{framework}/{repo}/{dataset}/{tag}"


def _key(stub_text: str) -> str:
    return stub_text.strip().split("?", 1)[0].lower()


def _recorded_stubs(folder: Path) -> tuple[set[str], set[str]]:
    """(stubs a folder declares as its own, stubs merely mentioned in its small text files)."""
    strong: set[str] = set()
    weak: set[str] = set()
    marker = folder / MARKER
    if marker.is_file():
        try:
            data = yaml.safe_load(marker.read_text("utf-8")) or {}
            if isinstance(data, dict) and data.get("stub"):
                strong.add(_key(str(data["stub"])))
        except (OSError, yaml.YAMLError):
            pass
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in _TEXT_FILES:
            continue
        try:
            if path.stat().st_size > _MAX_TEXT:
                continue
            text = path.read_text("utf-8", errors="replace")
        except OSError:
            continue
        if path.name == "model.md":
            declared = stub_from_card(_front_matter(text))
            if declared:
                strong.add(_key(declared))
        weak.update(_key(m) for m in _STUB_TEXT.findall(text))
    return strong, weak - strong


def _candidate_folders(root: Path) -> list[Path]:
    found = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    for child in children:
        if looks_like_model_folder(child) or (child / "model.md").is_file():
            found.append(child)
            continue
        try:  # <namespace>/<name>/ layout of newer SparseZoo versions
            found.extend(p for p in sorted(child.iterdir()) if p.is_dir()
                         and (looks_like_model_folder(p) or (p / "model.md").is_file()))
        except OSError:
            continue
    return found


def sparsezoo_cache_index(root: Path | None = None) -> dict[str, Path]:
    """Map each stub recorded in the SparseZoo cache (lower case, no query) to its folder.

    A folder's own stub (its ``model.md`` front matter) wins over a stub it only mentions.
    """
    root = root or sparsezoo_root()
    if not root.is_dir():
        return {}
    strong_map: dict[str, Path] = {}
    weak_map: dict[str, Path] = {}
    for folder in _candidate_folders(root):
        strong, weak = _recorded_stubs(folder)
        for key in strong:
            strong_map.setdefault(key, folder)
        for key in weak:
            weak_map.setdefault(key, folder)
    return {**weak_map, **strong_map}


def find_in_sparsezoo_cache(stub: Stub, index: dict[str, Path] | None = None) -> Path | None:
    """The SparseZoo cache folder that records ``stub``, or ``None``."""
    index = sparsezoo_cache_index() if index is None else index
    return index.get(_key(stub.without_query))


# --- what a model folder holds ------------------------------------------------------------------

@dataclass
class FolderContents:
    """What a model folder (or a single checkpoint file) holds.

    Attributes:
        path: the folder or file.
        checkpoints: framework checkpoints (``training/`` first).
        onnx: ONNX files (``model.onnx``, ``deployment/model.onnx``).
        recipes: recipe files under ``recipe/`` (``recipe*.md`` / ``*.yaml``).
        hf_config: ``config.json`` of a Hugging Face model folder, if any.
        problems: why the folder cannot be used (empty when it can).
    """

    path: Path
    checkpoints: list[Path] = field(default_factory=list)
    onnx: list[Path] = field(default_factory=list)
    recipes: list[Path] = field(default_factory=list)
    hf_config: Path | None = None
    problems: list[str] = field(default_factory=list)


def _is_checkpoint(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(CHECKPOINT_SUFFIXES) and not name.startswith(".")


def recipe_files(folder: Path) -> list[Path]:
    """Recipes of a model folder: ``recipe/recipe*.md``, ``recipe/*.yaml`` (sorted)."""
    recipe_dir = folder / "recipe"
    if not recipe_dir.is_dir():
        return []
    return sorted(p for p in recipe_dir.iterdir() if p.is_file()
                  and (p.suffix.lower() in (".yaml", ".yml") or
                       (p.suffix.lower() == ".md" and p.name.lower().startswith("recipe"))))


def inspect_model_path(path: Path) -> FolderContents:
    """List checkpoints, ONNX files and recipes of a model folder or file, and its problems."""
    path = Path(path)
    info = FolderContents(path)
    if path.is_file():
        if path.suffix.lower() == ".onnx":
            info.onnx.append(path)
        elif _is_checkpoint(path):
            info.checkpoints.append(path)
        else:
            info.problems.append(f"{path.name} is not a checkpoint "
                                 f"({', '.join(CHECKPOINT_SUFFIXES)}) or an ONNX file")
        if path.is_file() and path.stat().st_size == 0:
            info.problems.append(f"{path.name} is empty")
        return info
    if not path.is_dir():
        info.problems.append(f"{path} does not exist")
        return info
    for sub in (path / "training", path):
        if sub.is_dir():
            info.checkpoints.extend(p for p in sorted(sub.iterdir()) if _is_checkpoint(p))
            if (sub / "config.json").is_file() and info.hf_config is None:
                info.hf_config = sub / "config.json"
    for candidate in (path / "model.onnx", path / "deployment" / "model.onnx"):
        if candidate.is_file():
            info.onnx.append(candidate)
    info.recipes = recipe_files(path)
    if not info.checkpoints and not info.onnx:
        info.problems.append(
            f"no checkpoint ({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)}) in "
            f"{path / 'training'} or {path}, and no model.onnx")
    for item in info.checkpoints + info.onnx:
        if item.stat().st_size == 0:
            info.problems.append(f"{item} is empty")
    return info


def check_checkpoint_loads(path: Path) -> str | None:
    """Why ``path`` cannot be read safely, or ``None``.

    ``.pth``/``.pt``/``.ckpt``/``.tar``/``.bin`` are opened with ``torch.load(weights_only=True)``
    (which refuses pickled code) when torch is installed; ``.safetensors`` headers are parsed.
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        import json
        import struct

        try:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > 100_000_000:
                    return f"{path.name}: implausible safetensors header"
                json.loads(fh.read(length))
        except (OSError, struct.error, ValueError) as exc:
            return f"{path.name} is not a safetensors file ({exc})"
        return None
    if suffix in (".pth", ".pt", ".ckpt", ".tar", ".bin"):
        try:
            import torch
        except ImportError:
            logger.info("torch is not installed: %s not opened", path)
            return None
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return (f"{path.name} cannot be loaded with torch.load(weights_only=True): {first}. "
                    "Save a state dict instead of a pickled model object.")
    return None


# --- registering a model ------------------------------------------------------------------------

def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(src.resolve(), dst, target_is_directory=src.is_dir())
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
    else:
        shutil.copy2(src, dst)


def _assemble(src: Path, staging: Path, link: bool) -> None:
    """Lay ``src`` out in ``staging`` like a SparseZoo download."""
    if src.is_file():
        name = src.name.lower()
        if name.endswith(".onnx"):
            _place(src, staging / "model.onnx", link)
        elif name.endswith((".pth.tar", ".pth", ".pt", ".ckpt")):
            suffix = ".pth.tar" if name.endswith(".pth.tar") else src.suffix.lower()
            _place(src, staging / "training" / f"model{suffix}", link)
        else:  # .bin / .safetensors keep their (Hugging Face) names
            _place(src, staging / "training" / src.name, link)
        return
    if looks_like_model_folder(src) or (src / "recipe").is_dir():
        for child in sorted(src.iterdir()):
            if child.name != MARKER:
                _place(child, staging / child.name, link)
        return
    # A flat folder (a Hugging Face model folder, or a folder with a checkpoint): training/,
    # with recipe files also under recipe/.
    for child in sorted(src.iterdir()):
        _place(child, staging / "training" / child.name, link)
        lower = child.name.lower()
        if child.is_file() and lower.startswith("recipe") and lower.endswith((".md", ".yaml")):
            _place(child, staging / "recipe" / child.name, link)


def register_model(stub_text: str, source: Path, *, link: bool = False, force: bool = False,
                   recipe: Path | None = None, check_weights: bool = True) -> Path:
    """Register a local model folder or checkpoint file under ``stub_text`` in the first local
    zoo folder, in the SparseZoo layout; return the new folder.

    The folder is assembled under a temporary name next to its destination, validated, then
    renamed into place, so a failed ``add`` leaves nothing behind.

    Args:
        stub_text: the ``zoo:`` stub (query parameters are not part of the identity).
        source: a SparseZoo-style folder, a Hugging Face model folder, a folder holding a
            checkpoint, or one checkpoint / ONNX file.
        link: symlink the files instead of copying them.
        force: replace a model already registered under the stub.
        recipe: a recipe file to add as ``recipe/recipe.md`` (or ``.yaml``).
        check_weights: open checkpoints with ``torch.load(weights_only=True)`` when torch is
            installed.

    Raises:
        StubError: a malformed or unsafe stub.
        UsageError: already registered (without ``force``), a missing source.
        ModelNotFoundError: the source holds no usable checkpoint or ONNX file.
    """
    stub = parse_stub(stub_text)
    source = Path(source).expanduser()
    if not source.exists():
        raise UsageError(f"'{source}' does not exist.",
                         hint="Give a model folder or a checkpoint file (.pth, .pt, .bin, "
                              ".safetensors, .onnx).")
    if recipe is not None and not Path(recipe).is_file():
        raise UsageError(f"Recipe file '{recipe}' does not exist.")
    root = zoo_roots()[0]
    folder = local_zoo_folder(stub, root)
    if folder.exists() and not force:
        raise UsageError(f"{stub.without_query} is already registered at {folder}.",
                         hint="Pass --force to replace it, or `sparsify.zoo show` to see it.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".adding",
                                    dir=folder.parent))
    try:
        _assemble(source.resolve(), staging, link)
        if recipe is not None:
            recipe = Path(recipe)
            name = "recipe.yaml" if recipe.suffix.lower() in (".yaml", ".yml") else "recipe.md"
            _place(recipe, staging / "recipe" / name, link)
        info = inspect_model_path(staging)
        problems = list(info.problems)
        if check_weights and not problems:
            problems += [p for p in map(check_checkpoint_loads, info.checkpoints) if p]
        if problems:
            raise ModelNotFoundError(
                f"Cannot register {source} as {stub.without_query}: " + "; ".join(problems),
                hint="A model folder needs training/<checkpoint> (or a Hugging Face folder with "
                     "config.json and its weights) or model.onnx.")
        marker = {"stub": stub.without_query, "source": str(source.resolve()),
                  "mode": "link" if link else "copy",
                  "added": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        (staging / MARKER).write_text(yaml.safe_dump(marker, sort_keys=False), "utf-8")
        if folder.exists() or folder.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old",
                                        dir=folder.parent))
            os.replace(folder, old / "model")
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
        logger.info("Registered %s at %s", stub.without_query, folder)
        return folder
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
