"""``sparsify.zoo``: list, show, add, pull, and the dry run that picks up a registered model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from sparsify.cli.main import cli as run_cli
from sparsify.cli.zoo import cli
from sparsify.zoo.catalog import TIERS, VARIANTS, families, load_catalog

STUB = "zoo:cv/classification/resnet_v1-18/pytorch/sparseml/imagenet/pruned85_quant-none-vnni"


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[1:] if line.strip() and
            line.split()[0] in families()]


def test_list_prints_every_tier_of_every_family(caches):
    result = invoke("list")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert {(r[0], r[1], r[2]) for r in table} == {
        (f, t, v) for f in families() for t in TIERS for v in VARIANTS}
    assert {r[-1] for r in table} == {e.stub for e in load_catalog().values()}
    assert all(r[4] == "-" for r in table)  # nothing is on this (isolated) machine


def test_list_filters_by_use_case_alias_and_marks_local_models(_isolated_zoo, caches):
    (_isolated_zoo / STUB[4:] / "training").mkdir(parents=True)
    table = rows(invoke("list", "--use-case", "ic").output)
    assert {r[0] for r in table} == {"image_classification"} and len(table) == 6
    status = {r[-1]: r[4] for r in table}
    assert status[STUB] == "zoo" and list(status.values()).count("-") == 5
    bad = invoke("list", "--use-case", "imagecls")
    assert bad.exit_code == 2 and bad.output.startswith("Error: ") and "Did you mean" in bad.output


def test_add_then_show_then_dry_run_uses_the_local_path(_isolated_zoo, caches, tmp_path):
    torch = pytest.importorskip("torch")
    source = tmp_path / "my_model"
    source.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "arch_key": "resnet18"},
               source / "model.pth")
    recipe = tmp_path / "recipe.md"
    recipe.write_text("---\nnum_epochs: 3\n---\n# card\n")

    added = invoke("add", STUB, str(source), "--recipe", str(recipe))
    assert added.exit_code == 0, added.output
    folder = _isolated_zoo / STUB[4:]
    assert (folder / "training" / "model.pth").is_file()
    assert (folder / "recipe" / "recipe.md").read_text() == recipe.read_text()
    assert yaml.safe_load((folder / "sparsify-zoo.yaml").read_text())["stub"] == STUB
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left

    shown = invoke("show", STUB)
    assert shown.exit_code == 0, shown.output
    assert f"local path:   {folder} (local zoo)" in shown.output
    assert "recipe/recipe.md" in shown.output and "[found] local zoo" in shown.output

    plan = CliRunner().invoke(run_cli, ["sparse-transfer", "--use-case", "ic", "--data", "x",
                                        "--model", STUB, "--dry-run"])
    assert plan.exit_code == 0, plan.output
    model = yaml.safe_load(plan.output)["model"]
    assert model["local_path"] == str(folder) and model["catalog_stub"] == STUB
    assert plan.output.count("image_classification_transfer") >= 1  # 85% sparse: masks kept

    again = invoke("add", STUB, str(source))
    assert again.exit_code == 2 and "already registered" in again.output
    assert invoke("add", STUB, str(source / "model.pth"), "--force").exit_code == 0


def test_add_refuses_a_pickled_model_object_and_leaves_nothing(_isolated_zoo, tmp_path, caches):
    torch = pytest.importorskip("torch")
    bad = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), bad)  # a pickled module, not a state dict
    result = invoke("add", STUB, str(bad))
    assert result.exit_code == 1 and "weights_only=True" in result.output
    assert not (_isolated_zoo / STUB[4:]).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("add", STUB, str(empty))
    assert result.exit_code == 1 and "no checkpoint" in result.output


@pytest.mark.parametrize("stub", ["zoo:cv/classification/../../../../../tmp/pwned/x",
                                  "zoo:/tmp/a/b/c/d/e/f"])
def test_add_refuses_traversal_stubs(_isolated_zoo, tmp_path, stub):
    (tmp_path / "m.pth").write_bytes(b"x")
    result = invoke("add", stub, str(tmp_path / "m.pth"), "--no-check")
    assert result.exit_code == 2 and result.output.startswith("Error: Malformed zoo stub")
    assert not list(_isolated_zoo.iterdir())


def test_link_mode_links_instead_of_copying(_isolated_zoo, tmp_path, caches):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    assert invoke("add", STUB, str(tmp_path / "m.onnx"), "--link").exit_code == 0
    target = _isolated_zoo / STUB[4:] / "model.onnx"
    assert target.is_symlink() and target.resolve() == (tmp_path / "m.onnx").resolve()


def test_show_catalog_entry_not_on_this_machine(caches):
    stub = load_catalog()["nlp", "largest", "sparse"].stub
    result = invoke("show", stub)
    assert result.exit_code == 0, result.output
    assert "nlp / largest / sparse" in result.output and "sparsity:     0.90" in result.output
    assert "hf:neuralmagic/oBERT-12-upstream-pruned-unstructured-90: not cached" in result.output
    assert "local path:   none on this machine" in result.output
    assert f"sparsify.zoo pull {stub}" in result.output


def test_show_unknown_stub_lists_sources_and_exits_1(caches):
    result = invoke("show", "zoo:cv/classification/resnet_v1-50/pytorch/sparseml/imagenet/x-none")
    assert result.exit_code == 1 and result.output.startswith("Error: Model ")
    assert "Sources tried" in result.output and "sparsify.zoo add" in result.output


def test_pull_offline_reports_each_source(caches):
    stub = load_catalog()["nlp", "medium", "dense"].stub
    result = invoke("pull", stub)
    assert result.exit_code == 1
    assert "neuralmagic/oBERT-6-upstream-pretrained-dense is not in the Hugging Face cache" \
        in result.output and "HF_HUB_OFFLINE is set" in result.output


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--use-case", "qa"],
                                  ["show", STUB]])
def test_listing_imports_no_heavy_module(args):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['sparsify.zoo'] + {args!r}\n"
        "try:\n    runpy.run_module('sparsify.cli.zoo', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code in (0, 1, None), e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'torchvision', 'ultralytics', 'onnx', "
        "'onnxruntime', 'numpy', 'huggingface_hub', 'tqdm') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
