import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sparsify.cli.main import cli
from sparsify.usecases import USE_CASES

LEVELS = {"0": ("largest", "dense FP32"), "0.1": ("largest", "INT8"),
          "0.3": ("largest", "pruned + INT8"), "0.5": ("medium", "pruned + INT8"),
          "0.8": ("smallest", "pruned + INT8")}


def run(*args, cwd=None):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("uc", [u.sparsify_name for u in USE_CASES])
@pytest.mark.parametrize("level", LEVELS)
def test_dry_run_every_use_case_and_band(uc, level, tmp_path):
    result = run("sparse-transfer", "--use-case", uc, "--data", "./x", "--optim-level", level,
                 "--working-dir", str(tmp_path), "--dry-run")
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load(result.output)
    assert (plan["tier"], plan["scheme"]) == LEVELS[level]
    assert plan["sparsify_name"] == uc
    assert plan["recipe_as_applied"]["epochs"] > 0
    assert plan["run_folder (would be created)"].startswith(str(tmp_path))
    assert not list(tmp_path.iterdir()), "dry-run must not create folders"


def test_dry_run_shows_the_shrink_of_a_users_nlp_model(tmp_path):
    result = run("sparse-transfer", "--use-case", "sentiment", "--data", "./x", "--optim-level",
                 "0.75", "--model", "bert-base-uncased", "--working-dir", str(tmp_path),
                 "--dry-run")
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load(result.output)
    assert plan["shrink"].startswith("layers: keep 1/2 of the encoder layers")
    assert plan["recipe"]["args"]["keep_layers"] == 0.5
    assert plan["recipe_as_applied"]["modifiers"][0]["type"] == "LayerPruningModifier"
    result = run("sparse-transfer", "--use-case", "sentiment", "--data", "./x", "--optim-level",
                 "1.0", "--model", "bert-base-uncased", "--recipe-args", "keep_layers=0.5",
                 "--dry-run")
    assert yaml.safe_load(result.output)["recipe"]["args"]["keep_layers"] == 0.5
    result = run("sparse-transfer", "--use-case", "ic", "--data", "./x", "--optim-level", "0.8",
                 "--dry-run")
    assert yaml.safe_load(result.output)["shrink"].startswith("none: the catalog's smallest")
    result = run("sparse-transfer", "--use-case", "detection", "--data", "./x", "--optim-level",
                 "0.8", "--model", "yolov8n.pt", "--dry-run")
    assert yaml.safe_load(result.output)["shrink"].startswith("none: detection models are not")


def test_dry_run_shows_the_channel_shrink_of_a_users_image_model(tmp_path):
    result = run("sparse-transfer", "--use-case", "ic", "--data", "./x", "--optim-level",
                 "0.75", "--model", "resnet18", "--working-dir", str(tmp_path), "--dry-run")
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load(result.output)
    assert plan["shrink"].startswith("channels: keep 3/4 of the output channels")
    assert plan["recipe"]["args"]["keep_channels"] == 0.75
    assert plan["recipe_as_applied"]["modifiers"][0]["type"] == "ChannelPruningModifier"
    result = run("sparse-transfer", "--use-case", "ic", "--data", "./x", "--optim-level",
                 "1.0", "--model", "resnet18", "--recipe-args", "keep_channels=0.6", "--dry-run")
    assert yaml.safe_load(result.output)["recipe"]["args"]["keep_channels"] == 0.6


@pytest.mark.parametrize("alias,canonical", [("qa", "question_answering"),
                                             ("NER", "named_entity_recognition"),
                                             ("Image-Classification", "image_classification"),
                                             ("yolo", "object_detection")])
def test_aliases_on_cli(alias, canonical):
    result = run("sparse-transfer", "--use-case", alias, "--data", "x", "--dry-run")
    assert result.exit_code == 0
    assert yaml.safe_load(result.output)["use_case"] == canonical


@pytest.mark.parametrize("args,expected", [
    (["--use-case", "imagecls"], "Did you mean 'image_classification'?"),
    (["--use-case", "ic", "--optim-level", "1.5"], "Invalid optim level '1.5'"),
    (["--use-case", "ic", "--optim-level", "abc"], "not a number"),
    (["--use-case", "ic", "--model", "zoo:cv/../x"], "Malformed zoo stub"),
    (["--use-case", "ic", "--recipe-args", "{num_epochs: 2"], "--recipe-args is not valid JSON"),
    (["--use-case", "ic", "--recipe-args", "num_epochs"], "is not 'name=value'"),
    (["--use-case", "ic", "--recipe-args", "epochs=2"], "'epochs' is not a variable"),
    (["--use-case", "ic", "--train-kwargs", '{"bs": 2}'], "Unknown --train-kwargs key 'bs'"),
    (["--use-case", "ic", "--device", "gpu"], "Invalid --device 'gpu'"),
    (["--use-case", "ic", "--eval-metric", "bleu"], "Invalid --eval-metric 'bleu'"),
    (["--use-case", "ic", "--recipe", "no_such_recipe"], "is not a file, a zoo: stub or a shipped"),
])
def test_usage_errors_exit_2_without_traceback(args, expected):
    result = CliRunner().invoke(cli, ["sparse-transfer", "--data", "x", "--dry-run", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ")


def test_debug_shows_traceback():
    result = CliRunner().invoke(cli, ["sparse-transfer", "--use-case", "imagecls", "--data", "x",
                                      "--dry-run", "--debug"])
    assert result.exit_code == 2 and "Traceback" in result.output


def test_recipe_file_and_args_previewed(tmp_path):
    recipe = tmp_path / "r.md"
    recipe.write_text("---\nnum_epochs: 13\nqat: 8.0\nmods_modifiers:\n"
                      "  - !EpochRangeModifier\n      end_epoch: eval(num_epochs)\n"
                      "  - !QuantizationModifier\n      start_epoch: eval(qat)\n---\n# card\n")
    result = run("sparse-transfer", "--use-case", "ic", "--data", "x", "--recipe", str(recipe),
                 "--recipe-args", json.dumps({"num_epochs": 4, "qat": 2.5}), "--dry-run")
    assert result.exit_code == 0, result.output
    preview = yaml.safe_load(result.output)["recipe_as_applied"]
    assert preview["epochs"] == 4 and preview["qat_start_epoch"] == 2.5
    assert [m["type"] for m in preview["modifiers"]] == ["EpochRangeModifier",
                                                           "QuantizationModifier"]


def test_use_cases_command_lists_aliases():
    result = run("use-cases")
    assert result.exit_code == 0 and "named_entity_recognition" in result.output
    assert "qa" in result.output


def _script():
    return str(Path(sys.executable).parent / "sparsify.run")


@pytest.mark.parametrize("args", [
    ["--help"],
    ["sparse-transfer", "--help"],
    ["sparse-transfer", "--use-case", "qa", "--data", "x", "--dry-run"],
    ["sparse-transfer", "--use-case", "ic", "--data", "x", "--optim-level", "0.9", "--dry-run"],
    ["sparse-transfer", "--use-case", "sentiment", "--data", "x", "--optim-level", "0.75",
     "--model", "bert-base-uncased", "--dry-run"],
])
def test_help_and_dry_run_import_no_heavy_module(args):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['sparsify.run'] + {args!r}\n"
        "try:\n    runpy.run_module('sparsify.cli.main', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'torchvision', 'ultralytics', 'onnx', "
        "'onnxruntime', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_real_subprocess_console_script(tmp_path):
    out = subprocess.run([_script(), "sparse-transfer", "--use-case", "nlp-question_answering",
                          "--data", "./x", "--dry-run"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["use_case"] == "question_answering"
    bad = subprocess.run([_script(), "sparse-transfer", "--use-case", "qa", "--data", "x",
                          "--optim-level", "200", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 2
