"""Commands on an existing run folder: resume its training (``sparse-transfer --resume``) and
export it again (``sparsify.run export``). Both rebuild the run from its ``plan.yaml`` and
``recipe.yaml`` and then use the stages of :mod:`sparsify.pipeline`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import click

from sparsify.errors import UsageError
from sparsify.pipeline import (
    TRAIN_RESULT,
    export_and_report,
    load_task_builder,
    refuse_distributed,
    run_stages,
)
from sparsify.plan import Plan
from sparsify.rundir import INCOMPLETE, launch_rank, run_log
from sparsify.trainers.base import TrainResult

logger = logging.getLogger(__name__)

#: plan.yaml fields a resumed run must share with the command line, when it gives them
_RESUME_FIELDS = ("use_case", "optim_level", "teacher", "train_kwargs", "eval_metric",
                  "device", "seed")


def _open_run(run_dir: Path) -> tuple[Path, dict[str, Any], Plan]:
    """The run folder (resolved), its recorded ``plan.yaml`` and the plan rebuilt from it.

    Raises:
        UsageError: not a run folder (no plan.yaml and recipe.yaml), or not a plan.
    """
    import yaml

    from sparsify.plan import plan_from_dict

    run_dir = run_dir.expanduser().resolve()
    plan_file = run_dir / "plan.yaml"
    if not plan_file.is_file() or not (run_dir / "recipe.yaml").is_file():
        raise UsageError(f"{run_dir} is not a sparse-transfer run folder (no plan.yaml and "
                         "recipe.yaml in it).",
                         hint="Pass the folder a run printed as 'Run folder:'.")
    recorded = yaml.safe_load(plan_file.read_text(encoding="utf-8")) or {}
    return run_dir, recorded, plan_from_dict(recorded)


def _recorded_data(recorded: dict[str, Any]) -> str:
    return str(recorded.get("data_path") or recorded.get("data", ""))


def latest_incomplete(working_dir: Path) -> Path:
    """``--resume latest``: the newest run folder of ``working_dir`` marked ``INCOMPLETE``.

    Raises:
        UsageError: there is none.
    """
    marked = sorted((p.parent for p in working_dir.expanduser().glob(f"*/{INCOMPLETE}")),
                    key=lambda p: p.stat().st_mtime)
    if not marked:
        raise UsageError(f"No run folder in {working_dir} is incomplete: nothing to resume.",
                         hint="Pass the run folder: --resume RUN_DIR.")
    return marked[-1]


def _differences(recorded: dict[str, Any], given: Plan | None, data: str | None) -> list[str]:
    """What the command line of a resume says otherwise than the run recorded."""
    out = []
    if given is not None:
        mine = given.to_dict()
        pairs = [(key, mine.get(key), recorded.get(key)) for key in _RESUME_FIELDS]
        pairs.append(("model", mine["model"]["spec"], recorded.get("model", {}).get("spec")))
        pairs.append(("recipe_args", given.recipe_args,
                      recorded.get("recipe", {}).get("args")))
        out = [f"{key}: {new!r} (recorded {old!r})" for key, new, old in pairs if new != old]
    if data is not None and data not in (recorded.get("data"), recorded.get("data_path")):
        out.append(f"data: {data!r} (recorded {recorded.get('data')!r})")
    return out


def resume_run(run_dir: Path, given: Plan | None = None, data: str | None = None) -> Path:
    """``sparse-transfer --resume RUN_DIR``: continue an interrupted run in its own folder from
    its last resumable checkpoint (the teacher phase too, with ``--teacher auto``), then
    export and report as an uninterrupted run would.

    Raises:
        UsageError: not a run folder, a finished run ("already complete"), or ``given`` (the
            command line's plan) or ``data`` differing from what the run recorded (every
            difference listed).
    """
    from sparsify.trainers.common import resolve_device

    run_dir, recorded, plan = _open_run(run_dir)
    if not (run_dir / INCOMPLETE).is_file():
        raise UsageError(f"{run_dir} is already complete: its training finished.",
                         hint=f"Export it again with: sparsify.run export {run_dir}")
    differences = _differences(recorded, given, data)
    if differences:
        raise UsageError(f"The arguments differ from those {run_dir.name} was started with: "
                         f"{'; '.join(differences)}.",
                         hint="Resume with --resume RUN_DIR alone (the run's own arguments), "
                              "or start a new run.")
    resolve_device(plan.device)
    build_task = load_task_builder(plan)
    rank, world = launch_rank()
    if world > 1:  # every process continues the same run folder
        from accelerate import PartialState

        refuse_distributed(plan)
        PartialState(cpu=resolve_device(plan.device).type == "cpu")
    if rank == 0:
        click.echo(f"Resuming: {run_dir}")
    return run_stages(plan, _recorded_data(recorded), run_dir, build_task, resume=True)


def _check_same_split(recorded: Path, now: Path) -> None:
    """Warn when the data no longer splits as it did in training: the validation set the
    export is checked on is then another one."""
    import json

    def sides(path: Path) -> tuple[object, object] | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != 1:
            return None  # an older record format: nothing to compare with
        return record.get("train"), record.get("val")

    old, new = sides(recorded), sides(now)
    if old is not None and new is not None and old != new:
        logger.warning("The data split differs from the one recorded in %s (the data changed "
                       "since training): the export is checked on the current validation "
                       "set.", recorded)


def export_run(run_dir: Path, checkpoint: Path | None = None) -> Path:
    """``sparsify.run export RUN_DIR``: export and report a run again from its checkpoint.

    The run's ``plan.yaml`` and ``recipe.yaml`` rebuild the task (data checks, the starting
    model) in a scratch folder; the checkpoint's weights load into it with the structure
    training gave them; export and report go into ``run_dir`` as at the end of training (an
    earlier ``deployment/`` is kept as ``deployment.previous_N``).

    Raises:
        UsageError: ``run_dir`` is not a run folder.
        SparsifyError: the data, the model, the checkpoint or the export failed.
    """
    import tempfile

    from sparsify.recipe.parser import load_recipe

    run_dir, recorded, plan = _open_run(run_dir)
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    build_task = load_task_builder(plan)
    scratch = Path(tempfile.mkdtemp(prefix="sparsify-export-"))
    try:
        with run_log(run_dir):
            logger.info("Export again from %s", run_dir)
            task = build_task(plan, _recorded_data(recorded), scratch)
            _check_same_split(run_dir / "data_split.json", scratch / "data_split.json")
            task.load_model()
            meta = task.restore(recipe, run_dir / "training_artifacts", checkpoint)
            saved = run_dir / "training_artifacts" / TRAIN_RESULT
            if saved.is_file():
                train = TrainResult.load(saved)
            else:  # a run that stopped before writing it: the checkpoint's own figures
                metrics = {k: float(v) for k, v in (meta.get("metrics") or {}).items()}
                epoch = int(meta.get("epoch", 0))
                train = TrainResult(metrics, metrics, epoch, epoch)
            teacher_file = run_dir / "training_artifacts" / "teacher" / TRAIN_RESULT
            dense = TrainResult.load(teacher_file) if teacher_file.is_file() else None
            return export_and_report(plan, task, train, run_dir, dense)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
