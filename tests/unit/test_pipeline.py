"""The pipeline's checks before any work: missing extras, use cases without a trainer."""

import sys

from click.testing import CliRunner

from sparsify.cli.main import cli


def test_missing_extra_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "ic", "--data", "x",
                                      "--working-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "needs the 'torchvision' package" in result.output
    assert "pip install 'sparsify-transfer[vision]'" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_use_case_without_trainer_says_so_and_creates_nothing(monkeypatch, tmp_path):
    from sparsify import families

    monkeypatch.delitem(families.FAMILIES, "question_answering")
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "qa", "--data", "x",
                                      "--working-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "Training for question_answering is not available in this version" in result.output
    assert "--dry-run" in result.output and not list(tmp_path.iterdir())


def test_every_use_case_has_a_trainer():
    from sparsify.families import FAMILIES
    from sparsify.usecases import USE_CASES

    assert {uc.family for uc in USE_CASES} <= set(FAMILIES)


def test_yolo_under_a_distributed_launch_is_refused_before_anything(monkeypatch, tmp_path):
    import pytest

    pytest.importorskip("ultralytics")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "yolo", "--data", "x",
                                      "--working-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "cannot run under torchrun" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_teacher_self_warns_when_the_head_was_replaced(caplog):
    from types import SimpleNamespace

    import torch
    from torch import nn

    from sparsify.pipeline import resolve_teacher

    base = nn.Linear(2, 3)
    plan = SimpleNamespace(teacher="self")
    with caplog.at_level("WARNING"):
        teacher = resolve_teacher(plan, SimpleNamespace(baseline=base, head_replaced=False))
    assert teacher is not base and torch.equal(teacher.weight, base.weight)
    assert "teaches noise" not in caplog.text
    with caplog.at_level("WARNING"):
        resolve_teacher(plan, SimpleNamespace(baseline=base, head_replaced=True))
    assert "teaches noise" in caplog.text and "--teacher disable" in caplog.text


def test_unwritable_working_dir_is_a_usage_error_not_a_crash(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "ic", "--data", "x",
                                      "--working-dir", str(tmp_path / "afile" / "runs")])
    assert result.exit_code == 2, result.output
    assert "Cannot create the run folder under --working-dir" in result.output
    assert "unexpected failure" not in result.output and "Traceback" not in result.output
