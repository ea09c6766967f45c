"""``sparse_transfer``: the stages of a run, in order (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import click

from sparsify.errors import MissingExtraError, SparsifyError, UsageError
from sparsify.plan import SPARSE_MODEL_THRESHOLD, Plan, choose_recipe, plan_to_yaml
from sparsify.rundir import create_run_dir, launch_rank, write_text_atomic
from sparsify.trainers import TRAINERS

logger = logging.getLogger(__name__)


#: use-case family -> modules its trainer imports (checked before anything starts).
FAMILY_MODULES: dict[str, tuple[str, ...]] = {
    "image_classification": ("torchvision", "PIL"),
    "text_classification": ("transformers", "datasets"),
    "token_classification": ("transformers", "datasets"),
    "question_answering": ("transformers", "datasets"),
    "detection": ("torchvision", "ultralytics"),
    "segmentation": ("torchvision", "ultralytics"),
}


def _require(module: str, extra: str, purpose: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, extra, purpose) from None


def load_task_builder(plan: Plan) -> Any:
    """The domain's task builder, with its optional packages checked first.

    Raises:
        MissingExtraError: a package of the domain's extra is missing.
        SparsifyError: the use case has no trainer in this version (exit code 1).
    """
    uc = plan.use_case
    if "ultralytics" in FAMILY_MODULES.get(uc.family, ()):
        # Ultralytics pip-installs missing optional packages into the running environment
        # unless told not to (its env var is read once, at import): a run must not change it.
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    for module in ("torch", "onnx", "onnxruntime", "accelerate"):
        _require(module, uc.extra, f"Training for {uc.id}")
    target = TRAINERS.get(uc.family)
    if target is None:
        raise SparsifyError(
            f"Training for {uc.id} is not available in this version; only "
            f"{', '.join(TRAINERS)} runs end to end so far.",
            hint="--dry-run shows the plan and recipe for every use case.")
    for module in FAMILY_MODULES.get(uc.family, ()):
        _require(module, uc.extra, f"Training for {uc.id}")
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def resolve_recipe(plan: Plan, model_sparsity: float) -> Any:
    """The recipe stage: the shipped recipe is chosen again from the loaded model's measured
    sparsity (constant masks if already sparse, gradual pruning if dense)."""
    from sparsify.recipe.parser import load_recipe

    name, args = plan.recipe, dict(plan.recipe_args)
    if plan.recipe_origin == "shipped":
        sparse = model_sparsity > SPARSE_MODEL_THRESHOLD
        chosen = choose_recipe(plan.use_case, plan.band, sparse)
        if chosen != name:
            logger.info("Recipe %s instead of %s: the model is %.1f%% sparse", chosen, name,
                        100 * model_sparsity)
        if not chosen.endswith("_gmp"):
            args.pop("target_sparsity", None)
        elif "target_sparsity" not in args:
            args["target_sparsity"] = plan.target_sparsity
        plan.recipe = name = chosen
        plan.recipe_args = args
    return load_recipe(name, args)


def resolve_teacher(plan: Plan, task: Any) -> Any:
    """``disable`` -> None; ``self`` -> a frozen copy of the starting model; a path, stub or
    name -> loaded by the domain's task the way it loads ``--model``."""
    import copy

    from sparsify.plan import locate_model

    if plan.teacher == "disable":
        return None
    if plan.teacher == "self":
        if getattr(task, "head_replaced", False):
            logger.warning("--teacher self is a frozen copy of the starting model, whose head was "
                           "just replaced for these labels (untrained): distilling from it "
                           "teaches noise. Pass a teacher fine-tuned on these labels, or "
                           "--teacher disable.")
        return copy.deepcopy(task.baseline)
    return task.load_teacher(locate_model(plan.use_case, plan.band, plan.teacher))


def _shared_run_dir(working_dir: Path, use_case_id: str, device: str) -> Path:
    """Under a distributed launch the main process creates the run folder and every other rank
    is told its name (one folder per run, not one per process)."""
    import torch.distributed as dist
    from accelerate import PartialState

    from sparsify.trainers.common import resolve_device

    # Sets up the process group the trainers then use; Accelerate treats a CPU launch as
    # data-parallel only when told it is on CPU.
    state = PartialState(cpu=resolve_device(device).type == "cpu")
    box = [str(create_run_dir(working_dir, use_case_id)) if state.is_main_process else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def sparse_transfer(plan: Plan, data: str, working_dir: Path) -> Path:
    """Run every stage; returns the run folder.

    Under ``torchrun`` / ``accelerate launch`` every process trains (data-parallel); only the
    main one writes into the run folder (plan, checkpoints, export, metrics, summary). The other
    processes keep what the trainers write into a scratch folder of their own, removed at the
    end.

    Raises:
        UsageError: a distributed launch of a use case whose trainer runs its own (YOLO).
    """
    build_task = load_task_builder(plan)
    rank, world = launch_rank()
    if world > 1:
        if "ultralytics" in FAMILY_MODULES.get(plan.use_case.family, ()):
            raise UsageError(
                f"{plan.use_case.id} cannot run under torchrun / accelerate launch: Ultralytics "
                "starts its own multi-GPU processes.",
                hint="Run sparsify.run as one process; multi-GPU YOLO training is not "
                     "supported in this version.")
        run_dir = _shared_run_dir(working_dir, plan.use_case.id, plan.device)
    else:
        run_dir = create_run_dir(working_dir, plan.use_case.id)
    if rank != 0:  # the main process logs and reports; the others only train (and fail)
        import tempfile

        logging.getLogger().setLevel(logging.ERROR)
        scratch = Path(tempfile.mkdtemp(prefix=f"sparsify-rank{rank}-"))
        try:
            _stages(plan, data, scratch, build_task, main=False, distributed=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return run_dir
    file_log = logging.FileHandler(run_dir / "run.log")
    (run_dir / "logs").mkdir()
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(file_log)
    try:
        return _stages(plan, data, run_dir, build_task, distributed=world > 1)
    finally:
        logging.getLogger().removeHandler(file_log)
        file_log.close()


def _prepare(plan: Plan, data: str, run_dir: Path, build_task: Any) -> tuple[Any, Any, Any]:
    task = build_task(plan, data, run_dir)                                   # data + model
    recipe = resolve_recipe(plan, task.start_sparsity)                       # recipe
    return task, recipe, resolve_teacher(plan, task)


def _prepare_together(plan: Plan, data: str, run_dir: Path, build_task: Any, main: bool
                      ) -> tuple[Any, Any, Any]:
    """:func:`_prepare` on every process of a distributed launch: the main one first (it
    downloads what is missing into the shared caches), then the others; every process learns
    whether all succeeded, so a failure stops them all with the real message (none waits
    forever in training for a process that is gone)."""
    import torch.distributed as dist

    def attempt() -> tuple[tuple[Any, Any, Any] | None, SparsifyError | None]:
        try:
            return _prepare(plan, data, run_dir, build_task), None
        except SparsifyError as error:
            return None, error

    result, error = attempt() if main else (None, None)
    box = [None if error is None else error.message]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        if error is not None:
            raise error
        raise SparsifyError("The main process failed while preparing the run; its message "
                            "says why.")
    if not main:
        result, error = attempt()
    failures: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, None if error is None else error.message)
    if error is not None:
        raise error
    others = [(r, m) for r, m in enumerate(failures) if m is not None]
    if others:
        rank, message = others[0]
        raise SparsifyError(f"Process {rank} failed while preparing the run: {message}")
    assert result is not None
    return result


def _stages(plan: Plan, data: str, run_dir: Path, build_task: Any, main: bool = True,
            distributed: bool = False) -> Path:
    from sparsify.export.onnx_export import float_ops_on_dequantized_inputs
    from sparsify.report import (
        build_metrics, measure_latencies, slow_int8_warning, summary_table, write_metrics,
    )
    from sparsify.trainers.common import prunable_sparsity

    if main:
        write_text_atomic(run_dir / "plan.yaml", plan_to_yaml(plan, {"data": data}))
    try:
        if distributed:
            task, recipe, teacher = _prepare_together(plan, data, run_dir, build_task, main)
        else:
            task, recipe, teacher = _prepare(plan, data, run_dir, build_task)
    except SparsifyError:
        # Nothing was trained: the folder this run just made holds no result worth keeping.
        if main:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if main:
        click.echo(f"Run folder: {run_dir}")
        write_text_atomic(run_dir / "plan.yaml", plan_to_yaml(plan, {"data": data}))
        write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    train = task.train(recipe, teacher)                                      # train
    if not main:
        return run_dir
    artifacts = run_dir / "training_artifacts"
    export = task.export(run_dir / "deployment", artifacts / "dense_baseline.onnx")  # export
    from sparsify.export.deployment import gzip_size

    onnx_path, baseline_path = Path(export["onnx"]), Path(export["baseline_onnx"])
    latency = measure_latencies(onnx_path, baseline_path, task.latency_inputs)  # report
    sizes = {"onnx_bytes": onnx_path.stat().st_size, "onnx_gzip_bytes": gzip_size(onnx_path),
             "baseline_bytes": baseline_path.stat().st_size,
             "baseline_gzip_bytes": gzip_size(baseline_path)}
    sparsity = prunable_sparsity(task.model)
    metrics = build_metrics(plan.to_dict(), train, export, sparsity, sizes, latency, plan.recipe,
                            task.start_sparsity, sum(p.numel() for p in task.model.parameters()))
    warning = slow_int8_warning(latency, metrics["export"]["quantized"],
                                lambda: float_ops_on_dequantized_inputs(onnx_path),
                                plan.use_case.family)
    if warning:  # shown once, in the summary, and kept in metrics.yaml
        metrics["warnings"] = [warning]
    write_metrics(run_dir / "metrics.yaml", metrics)
    click.echo(f"\nDone: {run_dir}\n{summary_table(metrics)}")
    click.echo(f"Deployment: {run_dir / 'deployment'}")
    return run_dir

