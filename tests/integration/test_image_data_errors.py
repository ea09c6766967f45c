"""Bad image data: exit code 1, one clean message, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from PIL import Image

from sparsify.cli.main import cli

pytestmark = pytest.mark.integration


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def _run(data, tmp_path):
    return CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "ic", "--data", str(data),
                                    "--model", "resnet18", "--working-dir", str(tmp_path / "w")])


def _layout(tmp_path, spec):
    for rel in spec:
        if rel.endswith("/"):
            (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        elif rel.endswith(".bad"):
            p = tmp_path / rel.replace(".bad", ".jpg")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"not an image")
        else:
            _img(tmp_path / rel)
    return tmp_path / "d"


@pytest.mark.parametrize("spec,expected", [
    ([], "does not exist"),
    (["d/"], "no class folders"),
    (["d/a/1.png", "d/b/"], "no image"),
    (["d/a/1.png", "d/a/2.png"], "at least 2 classes"),
    (["d/train/a/1.png", "d/train/b/1.png", "d/val/a/1.png", "d/val/c/1.png"], "c"),
    (["d/a/1.png", "d/a/2.png", "d/b/1.bad", "d/b/2.bad"], "b"),
])
def test_bad_data_exit_1(tmp_path, spec, expected):
    data = _layout(tmp_path, spec)
    result = _run(data, tmp_path)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ")
    assert expected.lower() in result.output.lower()
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())
    assert "Traceback" not in result.output


@pytest.mark.parametrize("teacher", ["missing_teacher.pth", "corrupt_teacher.pth"])
def test_teacher_that_cannot_load_leaves_no_run_folder(tmp_path, teacher):
    import torch
    import torchvision

    data = _layout(tmp_path, ["d/a/1.png", "d/a/2.png", "d/b/1.png", "d/b/2.png"])
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                "arch_key": "resnet18"}, tmp_path / "m.pth")
    if teacher.startswith("corrupt"):  # exists, so it is read once the run folder exists
        (tmp_path / teacher).write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(cli, [
        "sparse-transfer", "--use-case", "ic", "--data", str(data), "--model",
        str(tmp_path / "m.pth"), "--teacher", str(tmp_path / teacher),
        "--working-dir", str(tmp_path / "w")])
    assert result.exit_code == 1, result.output
    assert teacher in result.output and "Traceback" not in result.output
    # a missing one is refused before any folder; a corrupt one's run folder is removed
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())


def _tiny_model(tmp_path, classes):
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "init.pth"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=classes).state_dict(),
                "arch_key": "resnet18"}, path)
    return path


def _train(data, tmp_path, model, *extra):
    return CliRunner().invoke(cli, [
        "sparse-transfer", "--use-case", "ic", "--data", str(data), "--model", str(model),
        "--optim-level", "0", "--recipe-args", '{"num_epochs": 1}', "--device", "cpu",
        "--train-kwargs", '{"image_size": 32, "batch_size": 4, "num_workers": 1}',
        "--working-dir", str(tmp_path / "w"), *extra])


def test_a_last_batch_of_one_image_trains(tmp_path):
    # 5 training images, batch 4: BatchNorm in training mode cannot take the lone fifth
    data = _layout(tmp_path, ["d/train/a/1.png", "d/train/a/2.png", "d/train/a/3.png",
                              "d/train/b/1.png", "d/train/b/2.png",
                              "d/val/a/1.png", "d/val/b/1.png"])
    result = _train(data, tmp_path, _tiny_model(tmp_path, 2))
    assert result.exit_code == 0, result.output


def test_an_image_that_opens_but_cannot_be_decoded_is_named(tmp_path):
    data = _layout(tmp_path, ["d/train/a/1.png", "d/train/a/2.png", "d/train/b/1.png",
                              "d/val/a/1.png", "d/val/b/1.png"])
    broken = data / "train" / "b" / "2.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(broken, quality=95)
    raw = broken.read_bytes()
    broken.write_bytes(raw[: int(len(raw) * 0.95)])  # Image.verify passes, decoding fails
    result = _train(data, tmp_path, _tiny_model(tmp_path, 2))
    assert result.exit_code == 1, result.output
    assert "2.jpg" in result.output and "Traceback" not in result.output
    assert "Original" not in result.output and result.output.count("Error:") == 1
