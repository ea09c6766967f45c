"""``sparsify.run``: the command-line entry point.

Only the standard library, click, PyYAML and the light modules (plan, use cases, stubs, recipe
parser) are imported here; training code is imported when a real run starts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
from click.core import ParameterSource

from sparsify import __version__
from sparsify.cli.common import guarded
from sparsify.errors import UsageError
from sparsify.plan import DEVICES_HELP

_USE_CASE_HELP = (
    "What to train: image_classification (ic), object_detection (yolo), segmentation, "
    "text_classification (glue), sentiment_analysis, token_classification, "
    "named_entity_recognition (ner), question_answering (qa). Sparsify's names "
    "(cv-classification, nlp-question_answering, ...) and any case with '-', '_' or spaces work."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sparsify.run")
def cli() -> None:
    """Sparse transfer learning: fine-tune a sparse model on your data, keep its sparsity,
    quantize it to INT8 and export it to ONNX."""


@cli.command("use-cases")
def use_cases_command() -> None:
    """List the use cases and every alias each accepts."""
    from sparsify.usecases import USE_CASES

    for uc in USE_CASES:
        aliases = ", ".join(sorted(set(uc.aliases) - {uc.id}))
        click.echo(f"{uc.id:26s} {uc.sparsify_name:30s} {uc.description}")
        click.echo(f"{'':26s} aliases: {aliases}")


@cli.command("train-kwargs")
@click.argument("use_case", metavar="USE_CASE")
def train_kwargs_command(use_case: str) -> None:
    """List the --train-kwargs keys of USE_CASE's trainer with their defaults."""

    def body() -> None:
        from sparsify.families import describe
        from sparsify.usecases import resolve_use_case

        uc = resolve_use_case(use_case)
        rows = describe(uc.family)
        width = max(len(name) for name, _, _ in rows)
        click.echo(f"--train-kwargs keys for {uc.id} (a JSON object; other keys are refused):")
        for name, default, text in rows:
            click.echo(f"  {name:<{width}}  default {default:<8}  {text}")

    guarded(False, body)


@cli.command("sparse-transfer")
@click.option("--use-case", default=None, metavar="USE_CASE",
              help=f"{_USE_CASE_HELP} Required unless --resume is given.")
@click.option("--data", default=None, metavar="DATA",
              help="Training data: a local folder or file for the use case (ImageFolder tree, "
                   "YOLO dataset YAML or folder, CSV/JSON/JSONL), or a named dataset. Required "
                   "unless --resume is given.")
@click.option("--model", default=None, metavar="MODEL",
              help="Starting model: a zoo: stub, a local folder or checkpoint, or a model name "
                   "(torchvision, Hugging Face Hub id, Ultralytics weights). Default: the "
                   "catalog's model for the optim level's tier.")
@click.option("--optim-level", default="0.5", show_default=True, metavar="LEVEL",
              help="0 = largest dense FP32 model; (0, 0.25) INT8; [0.25, 0.5) largest pruned + "
                   "INT8; [0.5, 0.75) medium pruned + INT8; [0.75, 1] smallest pruned + INT8. "
                   "An integer in (1, 100] is a percentage.")
@click.option("--recipe", default=None, metavar="RECIPE",
              help="SparseML-format recipe instead of the shipped one: a .yaml/.md file, a zoo: "
                   "stub, a shipped recipe name, or YAML text.")
@click.option("--recipe-args", default=None, metavar="ARGS",
              help="Override recipe variables before evaluation: a JSON object "
                   "('{\"num_epochs\": 2}') or k=v pairs (num_epochs=2,init_lr=1e-4).")
@click.option("--teacher", default="auto", show_default=True, metavar="TEACHER",
              help="Distillation teacher: 'auto' fine-tunes a dense copy of the starting model "
                   "first (for recipes that prune gradually with distillation; the student "
                   "starts from it); a path, zoo: stub or Hugging Face id of a model trained on "
                   "these labels; 'self' for a frozen copy of the starting model; 'disable' to "
                   "train without one.")
@click.option("--working-dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where the run folder sparse_transfer_<use_case>_<timestamp>/ is created.")
@click.option("--train-kwargs", default=None, metavar="JSON",
              help="Trainer settings as a JSON object: batch_size, learning_rate, weight_decay, "
                   "optimizer, num_workers, image_size (vision, YOLO), max_seq_length (NLP), "
                   "...; `sparsify.run train-kwargs USE_CASE` lists every key of a use case "
                   "with its default; other keys are refused with the valid list.")
@click.option("--eval-metric", default=None, metavar="METRIC",
              help="Metric that picks the best checkpoint (default: top1 for images, "
                   "map50_95 for YOLO, accuracy / f1 for NLP).")
@click.option("--device", default="auto", show_default=True, help=f"Device: {DEVICES_HELP}.")
@click.option("--seed", default=42, show_default=True, type=int,
              help="Random seed for data splits, initialisation and shuffling.")
@click.option("--dry-run", is_flag=True,
              help="Print the resolved plan (and recipe) as YAML and exit: no training, no "
                   "download, no folder created.")
@click.option("--resume", default=None, metavar="RUN_DIR",
              help="Continue an interrupted run (Ctrl-C, SIGTERM, a crash) in its own folder "
                   "from its last checkpoint; 'latest' is the newest incomplete run folder in "
                   "--working-dir. The run's own arguments are used; others given must match.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def sparse_transfer_command(ctx: click.Context, use_case: str | None, data: str | None,
                            model: str | None, optim_level: str, recipe: str | None,
                            recipe_args: str | None, teacher: str, working_dir: str,
                            train_kwargs: str | None, eval_metric: str | None, device: str,
                            seed: int, resume: str | None, dry_run: bool, debug: bool) -> None:
    """Fine-tune a (sparse) model on DATA for USE_CASE, keep or reach the sparsity of the optim
    level, quantize it and export an INT8 ONNX model with a metrics file.

    \b
    Example:
      sparsify.run sparse-transfer --use-case image_classification --data ./flowers \\
          --optim-level 0.5
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    def body() -> None:
        from sparsify.plan import (
            build_plan, parse_device, parse_optim_level, parse_train_kwargs, plan_to_yaml,
        )
        from sparsify.recipe.args import parse_recipe_args
        from sparsify.rundir import propose_run_dir
        from sparsify.usecases import resolve_use_case

        work = Path(working_dir).expanduser()
        if resume is None and (use_case is None or data is None):
            raise UsageError(f"Missing option '--{'use-case' if use_case is None else 'data'}'.",
                             hint="Give --use-case and --data (or --resume RUN_DIR).")
        if resume is not None:
            given = [name for name in ("model", "optim_level", "recipe", "recipe_args",
                                       "teacher", "train_kwargs", "eval_metric", "device",
                                       "seed")
                     if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
            if given and use_case is None:
                raise UsageError(f"--resume with --{given[0].replace('_', '-')} but without "
                                 "--use-case: give the run's whole command line, or "
                                 "--resume alone.")
            if dry_run:
                raise UsageError("--dry-run cannot be combined with --resume.")
        plan = None
        if use_case is not None:
            uc = resolve_use_case(use_case)
            plan = build_plan(
                uc, parse_optim_level(optim_level), model=model, recipe=recipe,
                recipe_args=parse_recipe_args(recipe_args),
                train_kwargs=parse_train_kwargs(train_kwargs, uc), teacher=teacher,
                device=parse_device(device), seed=seed, eval_metric=eval_metric,
            )
        if resume is not None:
            from sparsify.rerun import latest_incomplete, resume_run

            resume_run(latest_incomplete(work) if resume == "latest" else Path(resume), plan,
                       data)
            return
        assert plan is not None and data is not None
        if dry_run:
            from sparsify.recipe.preview import preview_recipe

            extra = {"data": data, "run_folder (would be created)":
                     str(propose_run_dir(work, plan.use_case.id))}
            extra.update(preview_recipe(plan))
            click.echo(plan_to_yaml(plan, extra), nl=False)
            return
        from sparsify.pipeline import sparse_transfer

        sparse_transfer(plan, data=data, working_dir=work)

    guarded(debug, body)


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--checkpoint", default=None, type=click.Path(path_type=Path),
              help="The checkpoint to export (default: the run's last one: "
                   "training_artifacts/model_last.pth, last/ or model_final.pt).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def export_command(run_dir: Path, checkpoint: Path | None, debug: bool) -> None:
    """Export and report a finished or failed run again from its checkpoint, without training:
    the INT8 ONNX deployment, its fidelity check and metrics.yaml, into RUN_DIR (an earlier
    deployment/ is kept as deployment.previous_N).

    \b
    Example:
      sparsify.run export ./sparse_transfer_image_classification_2026_12_02_10_00_00
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")

    def body() -> None:
        from sparsify.rerun import export_run

        export_run(run_dir, checkpoint)

    guarded(debug, body)


if __name__ == "__main__":  # pragma: no cover
    cli()
