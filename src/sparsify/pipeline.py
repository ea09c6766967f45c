"""``sparse_transfer``: the stages of a run, in order (see docs/ARCHITECTURE.md); resuming a
run and exporting one again are in :mod:`sparsify.rerun`."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sparsify.errors import MissingExtraError, SparsifyError, UsageError
from sparsify.plan import SPARSE_MODEL_THRESHOLD, Plan, choose_recipe, plan_to_yaml
from sparsify.recipe.shipped import is_gradual_recipe
from sparsify.rundir import (
    INCOMPLETE, create_run_dir, launch_rank, resume_command, run_log, write_text_atomic,
)
from sparsify.stop import Stopped
from sparsify.families import FAMILIES
from sparsify.trainers.base import Task, TrainResult

if TYPE_CHECKING:
    from torch import nn

    from sparsify.recipe.parser import Recipe

#: builds a domain's task from the plan, the data argument and the run folder
TaskBuilder = Callable[[Plan, str, Path], Task]

logger = logging.getLogger(__name__)


def _require(module: str, extra: str, purpose: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(module, extra, purpose) from None


def load_task_builder(plan: Plan) -> TaskBuilder:
    """The domain's task builder, with its optional packages checked first.

    Raises:
        MissingExtraError: a package of the domain's extra is missing.
        SparsifyError: the use case has no trainer in this version (exit code 1).
    """
    uc = plan.use_case
    family = FAMILIES.get(uc.family)
    if family is not None and "ultralytics" in family.modules:
        # Ultralytics pip-installs missing optional packages into the running environment
        # unless told not to (its env var is read once, at import): a run must not change it.
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    for module in ("torch", "onnx", "onnxruntime", "accelerate"):
        _require(module, uc.extra, f"Training for {uc.id}")
    if family is None:
        raise SparsifyError(
            f"Training for {uc.id} is not available in this version; only "
            f"{', '.join(FAMILIES)} runs end to end so far.",
            hint="--dry-run shows the plan and recipe for every use case.")
    for module in family.modules:
        _require(module, uc.extra, f"Training for {uc.id}")
    module, _, func = family.trainer.partition(":")
    return getattr(importlib.import_module(module), func)


def resolve_recipe(plan: Plan, model_sparsity: float) -> tuple[Plan, Recipe]:
    """The recipe stage: the shipped recipe is chosen again from the loaded model's measured
    sparsity (constant masks if already sparse, gradual pruning if dense).

    Returns:
        The plan with the recipe as chosen (a new value; ``plan`` is not changed) and the
        parsed recipe.
    """
    from sparsify.recipe.parser import load_recipe

    name, args = plan.recipe, dict(plan.recipe_args)
    if plan.recipe_origin == "shipped":
        sparse = model_sparsity > SPARSE_MODEL_THRESHOLD
        chosen = choose_recipe(plan.use_case, plan.band, sparse)
        if chosen != name:
            logger.info("Recipe %s instead of %s: the model is %.1f%% sparse", chosen, name,
                        100 * model_sparsity)
        if not is_gradual_recipe(chosen):
            args.pop("target_sparsity", None)
        elif "target_sparsity" not in args:
            args["target_sparsity"] = plan.target_sparsity
        name = chosen
    return dataclasses.replace(plan, recipe=name, recipe_args=args), load_recipe(name, args)


def resolve_teacher(plan: Plan, task: Task) -> nn.Module | None:
    """``disable`` and ``auto`` -> None (``auto``'s teacher is trained by
    :func:`train_teacher`); ``self`` -> a frozen copy of the starting model; a path, stub or
    name -> loaded by the domain's task the way it loads ``--model``."""
    import copy

    from sparsify.plan import locate_model

    if plan.teacher in ("disable", "auto"):  # auto: trained after preparation (train_teacher)
        return None
    if plan.teacher == "self":
        if task.head_replaced:
            logger.warning("--teacher self is a frozen copy of the starting model, whose head was "
                           "just replaced for these labels (untrained): distilling from it "
                           "teaches noise. Pass a teacher fine-tuned on these labels, or "
                           "--teacher disable.")
        return copy.deepcopy(task.baseline)
    return task.load_teacher(locate_model(plan.use_case, plan.band, plan.teacher))


def check_models(plan: Plan) -> None:
    """A ``--model`` or ``--teacher`` that nothing can provide (a missing path, a stub neither
    on this machine nor with a remote source) is refused before any data is read or any
    folder made; what a download may provide is left to the load."""
    from sparsify.zoo.resolve import check_available

    if plan.model.origin == "user":
        check_available(plan.model.spec)
    if plan.teacher not in ("auto", "disable", "self"):
        check_available(plan.teacher)


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
    from sparsify.trainers.common import resolve_device

    resolve_device(plan.device)  # an unavailable --device is refused before any folder exists
    check_models(plan)
    _, world = launch_rank()
    if world > 1:
        refuse_distributed(plan)
        run_dir = _shared_run_dir(working_dir, plan.use_case.id, plan.device)
    else:
        run_dir = create_run_dir(working_dir, plan.use_case.id)
    return run_stages(plan, data, run_dir, build_task)


def refuse_distributed(plan: Plan) -> None:
    """Under a distributed launch, a use case whose trainer starts its own processes (YOLO).

    Raises:
        UsageError: it is such a use case.
    """
    if "ultralytics" in FAMILIES[plan.use_case.family].modules:
        raise UsageError(
            f"{plan.use_case.id} cannot run under torchrun / accelerate launch: Ultralytics "
            "starts its own multi-GPU processes.",
            hint="Run sparsify.run as one process; multi-GPU YOLO training is not "
                 "supported in this version.")


def run_stages(plan: Plan, data: str, run_dir: Path, build_task: TaskBuilder,
               resume: bool = False) -> Path:
    """:func:`_stages` on this process: the main one writes into ``run_dir`` (with its
    ``run.log``); under a distributed launch the others train in a scratch folder of their own
    (removed at the end), reading a resumed run's checkpoints from ``run_dir``."""
    rank, world = launch_rank()
    if rank != 0:  # the main process logs and reports; the others only train (and fail)
        import tempfile

        logging.getLogger().setLevel(logging.ERROR)
        scratch = Path(tempfile.mkdtemp(prefix=f"sparsify-rank{rank}-"))
        try:
            _stages(plan, data, scratch, build_task, main=False, distributed=True,
                    resume=run_dir if resume else None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return run_dir
    (run_dir / "logs").mkdir(exist_ok=True)
    with run_log(run_dir):
        return _stages(plan, data, run_dir, build_task, distributed=world > 1,
                       resume=run_dir if resume else None)


Prepared = tuple[Task, Plan, "Recipe", "nn.Module | None"]


def _prepare(plan: Plan, data: str, run_dir: Path, build_task: TaskBuilder) -> Prepared:
    task = build_task(plan, data, run_dir)                                   # data
    task.load_model()                                                        # model
    _check_finite(task.model, plan.model.spec)
    plan, recipe = resolve_recipe(plan, task.start_sparsity)                 # recipe
    return task, plan, recipe, resolve_teacher(plan, task)


def _check_finite(model: nn.Module, spec: str) -> None:
    """A starting model with NaN or infinite weights cannot be trained: say which."""
    import torch

    from sparsify.errors import ModelNotFoundError

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelNotFoundError(
                f"The model '{spec}' has {bad} NaN or infinite value(s) in '{name}': it cannot "
                "be fine-tuned.", hint="Pass a checkpoint saved from a healthy training run.")


def _prepare_together(plan: Plan, data: str, run_dir: Path, build_task: TaskBuilder,
                      main: bool) -> Prepared:
    """:func:`_prepare` on every process of a distributed launch: the main one first (it
    downloads what is missing into the shared caches), then the others; every process learns
    whether all succeeded, so a failure stops them all with the real message (none waits
    forever in training for a process that is gone)."""
    import torch.distributed as dist

    def attempt() -> tuple[Prepared | None, SparsifyError | None]:
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
    failures: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, None if error is None else error.message)
    if error is not None:
        raise error
    others = [(r, m) for r, m in enumerate(failures) if m is not None]
    if others:
        rank, message = others[0]
        raise SparsifyError(f"Process {rank} failed while preparing the run: {message}")
    assert result is not None
    return result


def _stages(plan: Plan, data: str, run_dir: Path, build_task: TaskBuilder, main: bool = True,
            distributed: bool = False, resume: Path | None = None) -> Path:
    """The stages after the run folder exists; ``resume``: the run folder whose checkpoints
    training continues from (``run_dir`` itself on the main process).

    The run folder's life: until training starts it holds nothing worth keeping, so any
    failure there (or Ctrl-C) removes it (a resumed run's folder is never removed). When
    training starts the folder is marked ``INCOMPLETE`` (the file holds the command that
    resumes it) and kept whatever happens: checkpoints and logs stay, a failure or an
    interruption is recorded in ``metrics.yaml`` (``status: failed`` / ``interrupted``), and the
    mark is removed when training has finished.
    """
    try:
        if distributed:
            task, plan, recipe, teacher = _prepare_together(plan, data, run_dir, build_task, main)
        else:
            task, plan, recipe, teacher = _prepare(plan, data, run_dir, build_task)
    except BaseException:
        if main and resume is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    from sparsify.recipe.parser import load_recipe
    from sparsify.trainers.resume import find_resume

    if resume is not None:  # exactly the recipe the checkpoints were written under
        recipe = load_recipe(str(resume / "recipe.yaml"))
    elif main:
        click.echo(f"Run folder: {run_dir}")
        record = {"data": data}
        if Path(data).expanduser().exists():  # what `sparsify.run export` reads the data from
            record["data_path"] = str(Path(data).expanduser().resolve())
        write_text_atomic(run_dir / "plan.yaml", plan_to_yaml(plan, record))
        write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
    if main:
        write_text_atomic(run_dir / INCOMPLETE, f"{resume_command(run_dir)}\n")
    artifacts = run_dir / "training_artifacts"
    dense = None
    try:
        if plan.teacher == "auto":
            teacher, dense = train_teacher(plan, task, recipe, resume)       # dense teacher
            if main and dense is not None:
                dense.save(artifacts / "teacher" / TRAIN_RESULT)
        train = task.train(recipe, teacher,                                  # train
                           resume=find_resume(resume / "training_artifacts")
                           if resume is not None else None)
    except SparsifyError as error:
        if main:
            _record_training_failure(plan, run_dir, error)
        raise
    except Stopped as stopped:  # a signal, and a resumable checkpoint was written
        if main:
            _record_training_failure(plan, run_dir, SparsifyError(
                "Stopped by a signal at a checkpoint."), status="interrupted")
        kind = "Terminated (SIGTERM)" if stopped.terminated else "Interrupted"
        stopped.message = (f"{kind}: training stopped at a checkpoint. Resume with: "
                           f"{resume_command(run_dir)}" if main else
                           f"{kind}: training stopped with the main process, which wrote the "
                           "checkpoint and names the command that resumes the run.")
        raise
    except KeyboardInterrupt:  # a second Ctrl-C, or a signal outside training steps
        if main:
            _record_training_failure(plan, run_dir, SparsifyError(
                "Interrupted during training (Ctrl-C or SIGTERM)."), status="interrupted")
        raise
    if not main:
        return run_dir
    train.save(artifacts / TRAIN_RESULT)
    (run_dir / INCOMPLETE).unlink(missing_ok=True)
    return export_and_report(plan, task, train, run_dir, dense)


TRAIN_RESULT = "train_result.json"


def train_teacher(plan: Plan, task: Task, recipe: Recipe, resume: Path | None = None
                  ) -> tuple[nn.Module | None, TrainResult | None]:
    """``--teacher auto``: fine-tune a dense copy of the starting model on the user's data
    (:func:`teacher_recipe`), keep its validation metrics, and let the student start from it.
    ``resume`` (a run folder): a teacher that finished there is loaded from its checkpoint,
    one interrupted goes on from its resumable checkpoint.

    Returns:
        ``(teacher, its TrainResult)``, or ``(None, None)`` when the recipe or the family has
        no use for one (said in the log).
    """
    import copy

    from sparsify.families import FAMILIES

    if not FAMILIES[plan.use_case.family].distills:
        logger.info("--teacher auto: %s training has no distillation; no teacher is trained.",
                    plan.use_case.id)
        return None, None
    from sparsify.recipe.teacher import teacher_recipe

    phase = teacher_recipe(recipe)
    if phase is None:
        logger.info("--teacher auto: the recipe %s does not prune gradually with distillation; "
                    "no dense teacher is trained.", plan.recipe)
        return None, None
    from sparsify.trainers.resume import find_resume

    artifacts = (resume or task.run_dir) / "training_artifacts" / "teacher"
    if resume is not None and (artifacts / TRAIN_RESULT).is_file():
        dense = TrainResult.load(artifacts / TRAIN_RESULT)
        if not dense.used:
            return None, dense
        task.restore(phase, artifacts)
        click.echo(f"Dense teacher: the one trained before ({artifacts}).")
        return _student_from(task, task.model), dense
    click.echo(f"Dense teacher: fine-tuning a copy of the starting model for "
               f"{phase.max_epochs:g} epochs (--teacher auto; --teacher disable skips it).")
    student_start = task.model
    metric = plan.eval_metric
    before = task.validate(student_start)
    task.model = copy.deepcopy(student_start)
    dense = task.train(phase, None, phase="teacher",
                       resume=find_resume(artifacts) if resume is not None else None)
    teacher = task.model
    after = dense.metrics
    logger.info("Dense teacher: %s after %d epochs (%.0f s); the starting model had %s %.4f.",
                ", ".join(f"{k}={v:.4f}" for k, v in after.items()), dense.epochs, dense.seconds,
                metric, before.get(metric, float("nan")))
    if metric in before and metric in after and not _better(after[metric], before[metric],
                                                             metric):
        # a teacher that learned nothing teaches noise (with hardness 1 the labels are not
        # seen at all): train as --teacher disable would, from the starting model
        logger.warning("The dense teacher's %s (%.4f after %d epochs) is no better than the "
                       "starting model's (%.4f): it is not used; the student trains from the "
                       "starting model without distillation. More epochs (--recipe-args "
                       "teacher_epochs=N) or a better learning rate give a useful teacher.",
                       metric, after[metric], dense.epochs, before[metric])
        task.model = student_start
        dense.used = False
        return None, dense
    return _student_from(task, teacher), dense


def _student_from(task: Task, teacher: nn.Module) -> nn.Module:
    """Freeze the teacher; the student (``task.model``) starts from a copy of its weights."""
    import copy

    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    task.model = copy.deepcopy(teacher).train()
    for parameter in task.model.parameters():
        parameter.requires_grad_(True)
    return teacher


def _record_training_failure(plan: Plan, run_dir: Path, error: SparsifyError,
                             status: str = "failed") -> None:
    """A training that failed or was interrupted keeps its folder (checkpoints of the finished
    epochs, logs) and says so in ``metrics.yaml``."""
    from sparsify.report import write_metrics

    write_metrics(run_dir / "metrics.yaml", {
        "status": status, "failure": {"stage": "train", "error": type(error).__name__,
                                      "message": error.message},
        "use_case": plan.use_case.id, "optim_level": plan.optim_level, "recipe": plan.recipe})
    error.hint = (f"{error.hint + ' ' if error.hint else ''}The run folder keeps the logs and "
                  f"the checkpoints of the finished epochs: {run_dir}")


def _better(new: float, old: float, metric: str) -> bool:
    return new < old if metric == "loss" else new > old


def export_and_report(plan: Plan, task: Task, train: TrainResult, run_dir: Path,
                      dense: TrainResult | None = None) -> Path:
    """Export and report a trained task into ``run_dir``; a failure keeps the run.

    The deployment is built in ``deployment.partial/`` and renamed to ``deployment/`` when
    every check passed; an export that fails its fidelity check is kept as
    ``deployment_rejected/`` beside the checkpoints, and ``metrics.yaml`` records the figures.

    Raises:
        SparsifyError: the export or a check failed (``metrics.yaml`` says so; the message says
            how to export again without training).
    """
    from sparsify.export.deployment import FidelityError
    from sparsify.report import build_report, failed_report, summary_table, write_metrics

    artifacts = run_dir / "training_artifacts"
    partial, final = run_dir / "deployment.partial", run_dir / "deployment"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        export = task.export(partial, artifacts / "dense_baseline.onnx")      # export
        metrics = build_report(plan, task, train, export, dense)              # report
    except SparsifyError as error:
        export = error.result if isinstance(error, FidelityError) else None
        if partial.exists():
            _replace_dir(partial, run_dir / "deployment_rejected")
        write_metrics(run_dir / "metrics.yaml",
                      failed_report(plan, task, train, export, error, dense))
        error.hint = (f"{error.hint + ' ' if error.hint else ''}The trained model is kept: "
                      f"checkpoints in {artifacts}, logs in {run_dir / 'run.log'}, the figures "
                      f"in {run_dir / 'metrics.yaml'}. Once fixed, export again without "
                      f"training: sparsify.run export {run_dir}")
        raise
    _replace_dir(partial, final)
    export.onnx = final / export.onnx.name
    metrics["deployment"] = str(final)
    write_metrics(run_dir / "metrics.yaml", metrics)
    click.echo(f"\nDone: {run_dir}\n{summary_table(metrics)}")
    click.echo(f"Deployment: {final}")
    return run_dir


def _replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing ``target`` is kept as ``target.previous_N``."""
    if target.exists():
        n = 1
        while target.with_name(f"{target.name}.previous_{n}").exists():
            n += 1
        keep = target.with_name(f"{target.name}.previous_{n}")
        target.rename(keep)
        logger.info("The earlier %s is kept as %s", target.name, keep.name)
    source.rename(target)
