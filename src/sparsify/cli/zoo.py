"""``sparsify.zoo``: the model catalog and the local zoo.

``list`` and ``show`` read files only (no torch, no network); ``add`` copies or links a model
into the local zoo; ``pull`` downloads a catalog model into its source's cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from sparsify import __version__
from sparsify.cli.common import guarded as _guarded
from sparsify.errors import ModelNotFoundError, UsageError


def _setup_logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


_debug_option = click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
_verbose_option = click.option("-v", "--verbose", is_flag=True,
                               help="Log every source tried.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sparsify.zoo")
def cli() -> None:
    """The model catalog and the local zoo: where each model of each optim-level tier comes
    from, what is on this machine, and how to add your own.

    \b
    Sources, in the order tried:
      1. a local path;
      2. local zoo folders: SPARSIFY_ZOO_PATH (default ~/.cache/sparsify/zoo), one folder
         per stub laid out like a SparseZoo download (training/, deployment/, recipe/);
      3. a SparseZoo cache: SPARSEZOO_MODELS_PATH (default ~/.cache/sparsezoo);
      4. the catalog's remote sources (Hugging Face Hub, torchvision and Ultralytics weights),
         from their caches, or downloaded when online (HF_HUB_OFFLINE=1: cache only).
    """


def _families(use_case: str | None) -> list[str]:
    from sparsify.zoo.catalog import families

    known = families()
    if not use_case:
        return known
    if use_case in known:
        return [use_case]
    from sparsify.usecases import resolve_use_case

    return [resolve_use_case(use_case).catalog_family]


@cli.command("list")
@click.option("--use-case", default=None, metavar="USE_CASE",
              help="Only the catalog family of this use case (any alias, e.g. ic, yolo, qa), "
                   "or a family name: image_classification, detection, segmentation, nlp.")
@_debug_option
def list_command(use_case: str | None, debug: bool) -> None:
    """The catalog: every tier of every use-case family, with its stub, sparsity, shipped recipe
    and whether it is on this machine now (local zoo, SparseZoo cache, or a source's cache)."""

    def body() -> None:
        from sparsify.zoo.catalog import entries
        from sparsify.zoo.local import sparsezoo_cache_index
        from sparsify.zoo.resolve import local_status

        selected = _families(use_case)  # before any output: a bad use case prints only the error
        index = sparsezoo_cache_index()
        header = f"{'FAMILY':21s}{'TIER':9s}{'VARIANT':8s}{'SPARSITY':>9s}  {'LOCAL':10s}" \
                 f"{'RECIPE':31s}STUB"
        click.echo(header)
        for family in selected:
            for entry in entries(family):
                status, _ = local_status(entry, index)
                click.echo(f"{entry.family:21s}{entry.tier:9s}{entry.variant:8s}"
                           f"{entry.sparsity:9.2f}  {status or '-':10s}"
                           f"{entry.recipe or '-':31s}{entry.stub}")
        click.echo("\nLOCAL: zoo = local zoo folder, sparsezoo = SparseZoo cache, cached = in a "
                   "remote source's cache, - = not on this machine (`sparsify.zoo show STUB`).")

    _guarded(debug, body)


def _echo_kv(key: str, value: object) -> None:
    click.echo(f"  {key + ':':14s}{value}")


@cli.command("show")
@click.argument("stub")
@_debug_option
def show_command(stub: str, debug: bool) -> None:
    """A catalog entry or local model: its sources in the order tried (and which has it), its
    local path, its recipes and files. STUB is a zoo: stub (or a Hub id / weight name of the
    catalog)."""

    def body() -> None:
        from sparsify.zoo.catalog import find_entries_by_source, find_entries_by_stub
        from sparsify.zoo.local import inspect_model_path
        from sparsify.zoo.resolve import ResolvedModel, resolve_model
        from sparsify.zoo.sources import ULTRALYTICS_NAME, is_hub_id
        from sparsify.zoo.stub import is_stub, parse_stub

        if is_stub(stub):
            key = parse_stub(stub).without_query
            entries = find_entries_by_stub(key)
        elif is_hub_id(stub):
            key, entries = stub, find_entries_by_source("hf", stub)
        else:
            kind = "ultralytics" if ULTRALYTICS_NAME.match(stub) else "torchvision"
            key, entries = stub, find_entries_by_source(kind, stub)
            if not entries:
                raise UsageError(f"'{stub}' is neither a zoo: stub nor a catalog source name.",
                                 hint="`sparsify.zoo list` shows the catalog's stubs.")
        try:
            resolved = resolve_model(stub, download=False, progress=False)
        except ModelNotFoundError as error:
            if not entries:  # neither in the catalog nor here: the error lists what was tried
                raise
            resolved = ResolvedModel(stub, None, "none", entries[0],
                                     attempts=getattr(error, "attempts", []))
        click.echo(key)
        if entries:
            for entry in entries:
                _echo_kv("catalog", f"{entry.family} / {entry.tier} / {entry.variant}")
                _echo_kv("architecture", entry.architecture)
                _echo_kv("sparsity", f"{entry.sparsity:.2f}")
                _echo_kv("recipe", f"{entry.recipe or '-'} (shipped; the unpruned bands use "
                         f"the _finetune / _quant recipes)")
                if entry.zoo_recipe:
                    _echo_kv("zoo recipe", entry.zoo_recipe)
                if entry.fallback:
                    _echo_kv("fallback", f"{entry.fallback}: without a local copy the tier's "
                             "dense model is pruned gradually")
                if entry.note:
                    _echo_kv("note", " ".join(entry.note.split()))
        else:
            _echo_kv("catalog", "not in the catalog")
        click.echo("  sources, in the order tried:")
        for i, attempt in enumerate(resolved.attempts, 1):
            mark = "found" if attempt.found else "-"
            click.echo(f"    {i}. [{mark}] {attempt}")
        if resolved.path is None:
            _echo_kv("local path", "none on this machine")
            hint = f"sparsify.zoo pull {key}" if any(e.sources for e in entries) else None
            click.echo(f"  to get it:    {'online: ' + hint + '; ' if hint else ''}"
                       f"offline: sparsify.zoo add {key} PATH")
            return
        _echo_kv("local path", f"{resolved.path} ({resolved.origin})")
        info = inspect_model_path(resolved.path)
        _echo_kv("recipes", ", ".join(str(p) for p in info.recipes) or "none")
        _echo_kv("checkpoints", ", ".join(str(p) for p in info.checkpoints) or "none")
        if info.onnx:
            _echo_kv("onnx", ", ".join(str(p) for p in info.onnx))
        if info.problems:
            _echo_kv("problems", "; ".join(info.problems))

    _guarded(debug, body)


@cli.command("add")
@click.argument("stub")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--link", is_flag=True, help="Symlink the files instead of copying them.")
@click.option("--force", is_flag=True, help="Replace a model already registered under STUB.")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A recipe file (.md / .yaml) to store as recipe/recipe.md.")
@click.option("--no-check", is_flag=True,
              help="Do not open checkpoints with torch.load(weights_only=True).")
@_verbose_option
@_debug_option
def add_command(stub: str, path: Path, link: bool, force: bool, recipe: Path | None,
                no_check: bool, verbose: bool, debug: bool) -> None:
    """Register a local model folder or checkpoint file under STUB in the local zoo (the first
    folder of SPARSIFY_ZOO_PATH), in the SparseZoo layout.

    \b
    PATH may be: a SparseZoo download (training/, deployment/, recipe/, model.onnx), a
    Hugging Face model folder (config.json + weights), a folder with a checkpoint, or one
    checkpoint (.pth, .pt, .bin, .safetensors) or ONNX file. Checkpoints are opened with
    torch.load(weights_only=True) when torch is installed; a pickled model object is refused.

    \b
    Example:
      sparsify.zoo add zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned95_quant-none \\
          ./resnet50_pruned95/
    """
    _setup_logging(verbose, debug)

    def body() -> None:
        from sparsify.zoo.local import inspect_model_path, register_model
        from sparsify.zoo.stub import parse_stub

        folder = register_model(stub, path, link=link, force=force, recipe=recipe,
                                check_weights=not no_check)
        info = inspect_model_path(folder)
        key = parse_stub(stub).without_query
        click.echo(f"Registered {key}")
        click.echo(f"  at:          {folder} ({'links' if link else 'copy'})")
        click.echo(f"  checkpoints: {', '.join(str(p.relative_to(folder)) for p in info.checkpoints) or 'none'}")
        click.echo(f"  onnx:        {', '.join(str(p.relative_to(folder)) for p in info.onnx) or 'none'}")
        click.echo(f"  recipes:     {', '.join(str(p.relative_to(folder)) for p in info.recipes) or 'none'}")
        click.echo(f"Use it with: sparsify.run sparse-transfer --model {key} ...")

    _guarded(debug, body)


@cli.command("pull")
@click.argument("stub")
@click.option("--trust-remote-code", is_flag=True,
              help="Also download a Hub repo's Python files (custom model code). Nothing is "
                   "executed by this command; without the flag such files are not fetched.")
@_debug_option
def pull_command(stub: str, trust_remote_code: bool, debug: bool) -> None:
    """Download STUB (a catalog stub, Hub id or weight name) from its remote sources into their
    caches (online; with HF_HUB_OFFLINE=1 the Hub cache is only read). Downloads go to a
    temporary name, are verified, then renamed."""
    _setup_logging(True, debug)  # each source tried is logged

    def body() -> None:
        from sparsify.zoo.resolve import resolve_model

        resolved = resolve_model(stub, download=True, trust_remote_code=trust_remote_code)
        if resolved.path is None:
            raise UsageError(f"'{stub}' is not in the catalog; its framework downloads it "
                             "itself when a run starts.")
        click.echo(f"{stub}: {resolved.describe()}")

    _guarded(debug, body)


if __name__ == "__main__":  # pragma: no cover
    cli()
