"""``sparse-transfer --resume``: what is refused before anything runs (exit 2, one line, the
folder untouched)."""

from __future__ import annotations

from click.testing import CliRunner

from sparsify.cli.main import cli
from sparsify.rundir import INCOMPLETE
from sparsify.plan import build_plan, plan_to_yaml
from sparsify.recipe.parser import load_recipe
from sparsify.usecases import resolve_use_case


def _run_folder(tmp_path, incomplete=True):
    run = tmp_path / "work" / "sparse_transfer_image_classification_2026_01_01_00_00_00"
    run.mkdir(parents=True)
    plan = build_plan(resolve_use_case("ic"), 0.5, model="resnet18", seed=3)
    (run / "plan.yaml").write_text(plan_to_yaml(plan, {"data": str(tmp_path / "data")}))
    (run / "recipe.yaml").write_text(load_recipe(plan.recipe, plan.recipe_args).to_yaml())
    if incomplete:
        (run / INCOMPLETE).write_text("sparsify.run sparse-transfer --resume x\n")
    return run


def _invoke(*args):
    result = CliRunner().invoke(cli, ["sparse-transfer", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_a_finished_run_is_refused_as_complete(tmp_path):
    run = _run_folder(tmp_path, incomplete=False)
    before = sorted(p.name for p in run.iterdir())
    assert "already complete" in _invoke("--resume", str(run))
    assert sorted(p.name for p in run.iterdir()) == before


def test_other_arguments_are_refused_with_the_differences(tmp_path):
    run = _run_folder(tmp_path)
    out = _invoke("--resume", str(run), "--use-case", "ic", "--model", "resnet18",
                  "--seed", "4", "--optim-level", "0.6")
    assert "seed: 4 (recorded 3)" in out and "optim_level: 0.6 (recorded 0.5)" in out


def test_options_without_the_use_case_are_refused(tmp_path):
    run = _run_folder(tmp_path)
    assert "without --use-case" in _invoke("--resume", str(run), "--seed", "4")


def test_not_a_run_folder_and_nothing_to_resume(tmp_path):
    assert "not a sparse-transfer run folder" in _invoke("--resume", str(tmp_path))
    assert "nothing to resume" in _invoke("--resume", "latest", "--working-dir",
                                          str(tmp_path))


def test_latest_is_the_newest_incomplete_folder(tmp_path):
    from sparsify.rerun import latest_incomplete

    run = _run_folder(tmp_path)
    assert latest_incomplete(tmp_path / "work") == run


def test_use_case_and_data_are_required_without_resume(tmp_path):
    assert "Missing option '--use-case'" in _invoke("--data", str(tmp_path))
    assert "Missing option '--data'" in _invoke("--use-case", "ic")
