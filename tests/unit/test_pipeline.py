"""The pipeline's checks before any work: missing extras, use cases without a trainer."""

import sys

import pytest
from click.testing import CliRunner

from sparsify.cli.main import cli
from sparsify.errors import ModelNotFoundError


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


def test_an_unavailable_device_is_refused_before_any_folder(tmp_path):
    import torch

    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has a second CUDA device")
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "ic", "--data", "x",
                                      "--device", "cuda:1", "--working-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "--device cuda:1" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_with_nan_weights_is_refused_and_leaves_no_folder(tmp_path):
    import torch
    import torchvision

    from sparsify.data.synthetic import make_synthetic_image_folder

    make_synthetic_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4, size=32,
                                split=True, seed=0, val_per_class=2)
    model = torchvision.models.resnet18(num_classes=2)
    with torch.no_grad():
        model.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    torch.save({"state_dict": model.state_dict(), "arch_key": "resnet18"}, tmp_path / "nan.pth")
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, [
        "sparse-transfer", "--use-case", "ic", "--data", str(tmp_path / "data"),
        "--model", str(tmp_path / "nan.pth"), "--device", "cpu", "--working-dir", str(work),
        "--train-kwargs", '{"image_size": 32, "num_workers": 0}'])
    assert result.exit_code == 1, result.output
    assert "NaN or infinite" in result.output and "layer2.0.conv1.weight" in result.output
    assert not work.exists() or not list(work.iterdir())


def _refused_before_the_data(tmp_path, *options):
    """The data does not exist either: a model error (not a data error) shows the model was
    checked first; nothing is created."""
    work = tmp_path / "work"
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "ic",
                                      "--data", str(tmp_path / "no_data"), "--device", "cpu",
                                      "--working-dir", str(work), *options])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "no_data" not in result.output
    assert not work.exists()
    return result.output


def test_a_missing_model_path_is_refused_before_the_data_is_read(tmp_path):
    out = _refused_before_the_data(tmp_path, "--model", str(tmp_path / "gone.pth"))
    assert f"Model path '{tmp_path / 'gone.pth'}' does not exist" in out


def test_a_stub_nothing_provides_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSIFY_ZOO_PATH", str(tmp_path / "zoo"))
    monkeypatch.setenv("SPARSEZOO_MODELS_PATH", str(tmp_path / "sparsezoo"))
    stub = "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/pruned95-none"
    out = _refused_before_the_data(tmp_path, "--model", stub)
    assert "stub not in the catalog, so no remote source" in out and "sparsify.zoo add" in out


def test_a_missing_teacher_is_refused_before_the_data_is_read(tmp_path):
    out = _refused_before_the_data(tmp_path, "--model", "resnet18",
                                   "--teacher", str(tmp_path / "teacher.pth"))
    assert f"Model path '{tmp_path / 'teacher.pth'}' does not exist" in out


def test_what_a_download_can_provide_is_left_to_the_load(tmp_path, monkeypatch):
    from sparsify.zoo.resolve import check_available

    monkeypatch.setenv("SPARSIFY_ZOO_PATH", str(tmp_path / "zoo"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a catalog stub with a remote source, a Hub id, a framework name: none cached here
    check_available("zoo:cv/classification/resnet_v1-18/pytorch/sparseml/imagenet/base-none")
    check_available("some-org/some-model")
    check_available("resnet18")


def _image_run_args(tmp_path, **kwargs):
    import json

    import torch
    import torchvision

    from sparsify.data.synthetic import make_synthetic_image_folder

    make_synthetic_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8, size=32,
                                split=True, seed=0, val_per_class=2)
    torch.manual_seed(0)
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                "arch_key": "resnet18"}, tmp_path / "init.pth")
    return ["sparse-transfer", "--use-case", "ic", "--data", str(tmp_path / "data"),
            "--model", str(tmp_path / "init.pth"), "--optim-level", "0", "--device", "cpu",
            "--recipe-args", '{"num_epochs": 3}', "--working-dir", str(tmp_path / "work"),
            "--train-kwargs", json.dumps({"image_size": 32, "batch_size": 4, "num_workers": 0,
                                          **kwargs})]


def test_a_full_disk_names_the_file_and_keeps_the_run_resumable(tmp_path, monkeypatch):
    """ENOSPC on the second resumable checkpoint: exit 1 naming the file and the space, the run
    folder kept (INCOMPLETE, status failed), the first checkpoint intact, no temporary file."""
    from pathlib import Path

    import torch
    import yaml

    args = _image_run_args(tmp_path, checkpoint_steps=1)
    save, writes = torch.save, []

    def filling_disk(obj, path, *a, **kw):
        if Path(path).name == ".resume.pth.tmp":
            writes.append(path)
            if len(writes) == 2:
                with open(path, "wb") as handle:  # a part written, then the disk is full
                    handle.write(b"partial")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                                   "failed writing file data/3: file write failed")
        return save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", filling_disk)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    (run,) = (tmp_path / "work").iterdir()
    artifacts = run / "training_artifacts"
    assert f"No space left on the device writing {artifacts / 'resume.pth'}" in result.output
    assert "MB needed" in result.output and "MB free" in result.output
    assert "Traceback" not in result.output and "unexpected failure" not in result.output
    assert (run / "INCOMPLETE").is_file()
    assert yaml.safe_load((run / "metrics.yaml").read_text())["status"] == "failed"
    first = torch.load(artifacts / "resume.pth", weights_only=True)  # intact, readable
    assert first["lifecycle"]["step"] == 1
    assert not list(artifacts.glob(".*.tmp")) and not list(artifacts.glob(".*.new"))


def test_ctrl_c_while_the_run_is_prepared_leaves_no_folder(tmp_path, monkeypatch):
    from sparsify import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    args = _image_run_args(tmp_path)
    monkeypatch.setattr(pipeline, "_prepare", interrupted)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130, result.output
    assert "Interrupted." in result.output and "Traceback" not in result.output
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").iterdir())


def test_ultralytics_config_names_are_not_taken_for_missing_paths(tmp_path, monkeypatch):
    from sparsify.zoo.resolve import check_available

    monkeypatch.chdir(tmp_path)  # no such files here
    for name in ("yolov8n.yaml", "yolo11s-seg.yaml", "yolov8n.pt"):
        check_available(name)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        check_available("./yolov8n.yaml")  # a path: it must exist
