"""bench/bench_levels.py without training: its arguments, the structure a run kept (read from
fake run folders laid out as a run writes them: plan.yaml, the applied recipe.yaml with its
modifier tags, the checkpoint's config.json), the table and the issue's bounds on fake
metrics.yaml dicts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_levels", BENCH / "bench_levels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_levels"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()
NAN = float("nan")


def _metrics(acc: float, b1: float, b32: float, *, key: str = "accuracy", fmt: str = "int8",
             params: int = 22_700_000, teacher: float | None = None, train: float = 100.0,
             status: str = "complete", sparsity: float | None = 0.87) -> dict:
    lat = {f"batch_{b}": {"speedup": s, "speedup_p25": s - 0.1, "speedup_p75": s + 0.1,
                          "model_ms": 1.0, "dense_fp32_baseline_ms": s}
           for b, s in ((1, b1), (32, b32))}
    m = {"status": status, "task_metrics": {key: acc, "loss": 0.3},
         "sparsity": {"overall": sparsity or 0.0, "pruned_layers": sparsity},
         "size": {"onnx_gzip_bytes": 8_300_000}, "latency_onnxruntime_cpu": lat,
         "export": {"format": fmt, "quantized": fmt == "int8"}, "parameters": params,
         "train_seconds": train}
    if teacher is not None:
        m["dense_teacher"] = {"task_metrics": {key: teacher}}
        m["train_seconds_total"] = train + 50
    return m


# --- fake run folders ---------------------------------------------------------------------------

NLP_RECIPE = """version: 1.1.0
num_epochs: 3
keep_layers: {keep}
structure_modifiers:
- !LayerPruningModifier
  keep_fraction: {keep}
training_modifiers:
- !EpochRangeModifier
  start_epoch: 0.0
  end_epoch: 3
"""

IMAGE_RECIPE = """version: 1.1.0
num_epochs: 10
keep_channels: {keep}
structure_modifiers:
- !ChannelPruningModifier
  keep_fraction: {keep}
training_modifiers:
- !EpochRangeModifier
  start_epoch: 0.0
  end_epoch: 10
"""


def _minilm(tmp_path: Path) -> Path:
    model = tmp_path / "minilm"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    return model


def _text_run(tmp_path: Path, name: str, keep: float | None, trained_layers: int | None,
              plan_args: dict | None = None) -> Path:
    run = tmp_path / name / "sparse_transfer_sentiment_analysis_x"
    run.mkdir(parents=True)
    plan = {"use_case": "sentiment_analysis", "model": {"local_path": str(_minilm(tmp_path))},
            "recipe": {"name": "nlp_gmp", "args": plan_args or {}}}
    (run / "plan.yaml").write_text(json.dumps(plan))  # JSON is YAML
    if keep is not None:
        (run / "recipe.yaml").write_text(NLP_RECIPE.format(keep=keep))
    if trained_layers is not None:
        best = run / "training_artifacts" / "best"
        best.mkdir(parents=True)
        (best / "config.json").write_text(json.dumps({"num_hidden_layers": trained_layers}))
    return run


def _image_run(tmp_path: Path, name: str, keep: float | None) -> Path:
    run = tmp_path / name / "sparse_transfer_image_classification_x"
    run.mkdir(parents=True)
    (run / "plan.yaml").write_text(json.dumps({"recipe": {"args": {}}}))
    if keep is not None:
        (run / "recipe.yaml").write_text(IMAGE_RECIPE.format(keep=keep))
    else:  # image_classification_finetune: no ChannelPruningModifier
        (run / "recipe.yaml").write_text("version: 1.1.0\nnum_epochs: 10\n")
    return run


# --- arguments ----------------------------------------------------------------------------------


def test_argument_defaults() -> None:
    args = bench.parse_args(["--model", "minilm", "--work", "/tmp/w"])
    assert args.epochs == 3 and not args.reuse
    assert [float(x) for x in args.level_list] == [0.0, 0.5, 0.75, 1.0]
    assert args.level_list[0] == "0.0"  # folder level_0.0, as bench_image_pretrained.py's
    assert args.results == BENCH / "results" / "levels_minilm.md"
    args = bench.parse_args(["--model", "efficientnet", "--work", "/tmp/w", "--reuse"])
    assert args.epochs == 10 and args.reuse
    assert args.results == BENCH / "results" / "levels_efficientnet.md"
    args = bench.parse_args(["--model", "efficientnet", "--work", "w", "--epochs", "2",
                             "--levels", "0,1", "--results", "r.md"])
    assert args.epochs == 2 and args.level_list == ["0", "1"] and args.results == Path("r.md")
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "resnet", "--work", "w"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "minilm", "--work", "w", "--levels", "0,x"])


def test_the_settings_are_those_of_the_existing_benchmarks() -> None:
    """The level-0.0 and 0.5 rows must repeat bench_nlp_sentiment.py / bench_image_pretrained.py:
    their argparse defaults and the kwargs they pass."""
    for name in ("bench_nlp_sentiment", "bench_image_pretrained"):
        assert (BENCH / f"{name}.py").is_file()
    text = (BENCH / "bench_nlp_sentiment.py").read_text()
    for flag, value in (("--train-per-class", 800), ("--val-per-class", 200), ("--epochs", 3),
                        ("--lr", "1e-4"), ("--seed", 0)):
        assert f'"{flag}", type=' in text and f"default={value})" in text, flag
    assert '"batch_size": 16, "max_seq_length": 128' in text
    assert bench.MINILM == {"train_per_class": 800, "val_per_class": 200, "seed": 0,
                            "init_lr": 1e-4, "batch_size": 16, "max_seq_length": 128}
    text = (BENCH / "bench_image_pretrained.py").read_text()
    for flag, value in (("--epochs", 10), ("--image-size", 64), ("--train-per-class", 300),
                        ("--val-per-class", 100)):
        assert f'"{flag}", type=int, default={value})' in text, flag
    assert '"batch_size": 64' in text
    assert bench.EFFNET == {"train_per_class": 300, "val_per_class": 100, "image_size": 64,
                            "batch_size": 64}
    assert bench.MODELS["minilm"].epochs == 3 and bench.MODELS["efficientnet"].epochs == 10


def test_help_and_the_data_writers_import() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "bench_levels.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--model {efficientnet,minilm}" in out.stdout and "--reuse" in out.stdout
    import bench_nlp_sentiment  # bench/ is on sys.path once bench_levels is loaded

    assert callable(bench_nlp_sentiment.write_split)
    assert callable(bench_nlp_sentiment.minilm_folder)
    pytest.importorskip("torch")
    import bench_image_pretrained

    assert callable(bench_image_pretrained.write_fashion_mnist)
    assert callable(bench_image_pretrained.pretrained_state_dict)
    assert bench_image_pretrained.ARCH == "efficientnet_lite0"


# --- kept structure ----------------------------------------------------------------------------


def test_kept_layers_of_text_runs(tmp_path: Path) -> None:
    dense = _text_run(tmp_path, "level_0.0", 1.0, 6)
    assert bench.kept_structure(dense, "layers") == "all 6 layers"
    shrunk = _text_run(tmp_path, "level_0.75", 0.5, 3, {"keep_layers": 0.5})
    assert bench.kept_structure(shrunk, "layers") == "6 -> 3 layers (keep 0.5)"
    # no checkpoint: the count LayerPruningModifier keeps (6 x 1/3 -> 2)
    smallest = _text_run(tmp_path, "level_1.0", 0.3333, None)
    assert bench.kept_structure(smallest, "layers") == "6 -> 2 layers (keep 0.3333)"
    # no recipe.yaml: plan.yaml's recipe args
    planned = _text_run(tmp_path, "level_0.9", None, None, {"keep_layers": 0.4})
    assert bench.keep_fraction(planned, "LayerPruningModifier", "keep_layers") == 0.4
    assert bench.kept_structure(planned, "layers") == "6 -> 2 layers (keep 0.4)"
    narrow = _text_run(tmp_path, "level_1.0b", None, 3, {"keep_layers": 0.5, "keep_ffn": 0.25})
    assert bench.kept_structure(narrow, "layers") == "6 -> 3 layers (keep 0.5), FFN keep 0.25"
    assert bench.kept_structure(tmp_path / "nowhere", "layers") == "-"


def test_kept_channels_of_image_runs(tmp_path: Path) -> None:
    assert bench.kept_structure(_image_run(tmp_path, "a", None), "channels") == "all channels"
    assert bench.kept_structure(_image_run(tmp_path, "b", 1.0), "channels") == "all channels"
    run = _image_run(tmp_path, "c", 0.75)
    assert bench.kept_structure(run, "channels") == "0.75 of the conv channels"
    assert bench.keep_fraction(run, "ChannelPruningModifier", "keep_channels") == 0.75
    assert bench.kept_structure(tmp_path / "nowhere", "channels") == "-"


# --- table and bounds ---------------------------------------------------------------------------


def _text_results(tmp_path: Path, acc75: float = 0.92, speed75: tuple = (3.2, 3.1),
                  acc10: float = 0.90, speed10: tuple = (5.5, 5.1)) -> dict:
    return {
        "0.0": (_metrics(0.935, 1.0, 1.02, fmt="fp32", sparsity=None, train=250),
                262.0, _text_run(tmp_path, "level_0.0", 1.0, 6)),
        "0.5": (_metrics(0.895, 1.56, 1.51, teacher=0.93, sparsity=0.78, train=700),
                892.0, _text_run(tmp_path, "level_0.5", 1.0, 6)),
        "0.75": (_metrics(acc75, *speed75, teacher=0.93, params=17_400_000, train=400),
                 524.0, _text_run(tmp_path, "level_0.75", 0.5, 3)),
        "1.0": (_metrics(acc10, *speed10, teacher=0.93, params=15_600_000, sparsity=0.95,
                         train=300), 393.0, _text_run(tmp_path, "level_1.0", 0.3333, 2)),
    }


def _rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].split("|")[1:-1]]
    return {cells[0]: dict(zip(head, cells)) for cells in
            ([c.strip() for c in line.split("|")[1:-1]] for line in lines[1:])}


def test_text_table(tmp_path: Path) -> None:
    rows = _rows(bench.table(_text_results(tmp_path), bench.MODELS["minilm"]))
    assert list(rows) == ["0.0", "0.5", "0.75", "1.0"]
    r0, r75, r10 = rows["0.0"], rows["0.75"], rows["1.0"]
    assert r0["accuracy"] == "0.9350" and r0["dense teacher accuracy"] == "-"
    assert r0["accuracy vs level 0.0 (points)"] == "reference"
    assert r0["shipped ONNX"] == "FP32" and r0["kept structure"] == "all 6 layers"
    assert r0["sparsity (pruned layers)"] == "0.000" and r0["wall vs level 0.0"] == "1.00"
    assert r75["accuracy vs level 0.0 (points)"] == "-1.50"
    assert r75["dense teacher accuracy"] == "0.9300"
    assert r75["kept structure"] == "6 -> 3 layers (keep 0.5)"
    assert r75["parameters (M)"] == "17.40 (0.77x)" and r75["shipped ONNX"] == "INT8"
    assert r75["speedup b1 (IQR)"] == "3.20x (3.10-3.30)"
    assert r75["speedup b32 (IQR)"] == "3.10x (3.00-3.20)"
    assert r75["gzip MB"] == "8.30" and r75["wall s"] == "524"
    assert r75["wall vs level 0.0"] == "2.00"
    assert r10["kept structure"] == "6 -> 2 layers (keep 0.3333)"
    assert r10["sparsity (pruned layers)"] == "0.950"
    assert r10["accuracy vs level 0.0 (points)"] == "-3.50"


def test_bounds_met(tmp_path: Path) -> None:
    met, text = bench.verdict(_text_results(tmp_path), bench.MODELS["minilm"])
    assert met == {0.75: True, 1.0: True}
    lines = text.splitlines()
    assert lines[0].startswith("Level 0.75 (bounds: >= 3x at batch 1 and 32, within 2.5 points")
    assert "3.20x at batch 1, 3.10x at batch 32, -1.50 points: MET." in lines[0]
    assert lines[1].startswith("Level 1.0 (bounds: >= 5x") and lines[1].endswith(": MET.")


def test_bounds_missed(tmp_path: Path) -> None:
    results = _text_results(tmp_path, acc75=0.905, speed75=(3.4, 2.9), acc10=0.8949)
    met, text = bench.verdict(results, bench.MODELS["minilm"])
    assert met == {0.75: False, 1.0: False}
    lines = text.splitlines()
    assert "NOT MET (2.90x at batch 32, -3.00 points)" in lines[0]
    assert "NOT MET (-4.01 points)" in lines[1]


def test_bounds_exactly_on_the_edge_are_met(tmp_path: Path) -> None:
    # 0.91 - 0.935 is -2.4999999999999...: within 2.5 points; 3.0x is >= 3x
    results = _text_results(tmp_path, acc75=0.91, speed75=(3.0, 3.0), acc10=0.895,
                            speed10=(5.0, 5.0))
    met, _ = bench.verdict(results, bench.MODELS["minilm"])
    assert met == {0.75: True, 1.0: True}


def test_a_missing_level(tmp_path: Path) -> None:
    results = _text_results(tmp_path)
    del results["1.0"]
    rows = _rows(bench.table(results, bench.MODELS["minilm"]))
    assert list(rows) == ["0.0", "0.5", "0.75"]
    met, text = bench.verdict(results, bench.MODELS["minilm"])
    assert met == {0.75: True, 1.0: None}
    assert "Level 1.0 (bounds" in text and "not run, NOT CHECKED." in text
    # no level 0.0: the accuracy side cannot be checked, a speedup below the bound still fails
    del results["0.0"]
    rows = _rows(bench.table(results, bench.MODELS["minilm"]))
    assert rows["0.75"]["accuracy vs level 0.0 (points)"] == "-"
    assert rows["0.75"]["wall vs level 0.0"] == "-"
    assert rows["0.75"]["parameters (M)"] == "17.40"
    met, text = bench.verdict(results, bench.MODELS["minilm"])
    assert met[0.75] is None and "no accuracy change" in text and "NOT CHECKED" in text
    results["0.75"][0]["latency_onnxruntime_cpu"]["batch_1"]["speedup"] = 2.0
    met, _ = bench.verdict(results, bench.MODELS["minilm"])
    assert met[0.75] is False


def test_image_table_reused_and_failed_runs(tmp_path: Path) -> None:
    """Reused runs (wall nan): the wall column says so and the ratio compares training
    seconds; a run that failed its export has no latency."""
    failed = _metrics(0.70, 0, 0, key="top1", params=2_000_000, teacher=0.85, train=400,
                      status="failed")
    del failed["latency_onnxruntime_cpu"], failed["size"]
    results = {
        "0.0": (_metrics(0.851, 1.0, 1.0, key="top1", fmt="fp32", params=3_400_000, train=838,
                         sparsity=None), NAN, _image_run(tmp_path, "level_0.0", None)),
        "0.75": (_metrics(0.80, 3.1, 3.3, key="top1", params=2_000_000, teacher=0.85,
                          train=400), NAN, _image_run(tmp_path, "level_0.75", 0.75)),
        "1.0": (failed, 510.0, _image_run(tmp_path, "level_1.0", 0.5)),
    }
    setup = bench.MODELS["efficientnet"]
    rows = _rows(bench.table(results, setup))
    assert rows["0.0"]["top-1"] == "0.8510" and rows["0.0"]["kept structure"] == "all channels"
    assert rows["0.0"]["wall s"] == "reused (training 838)"
    r75 = rows["0.75"]
    assert r75["kept structure"] == "0.75 of the conv channels"
    assert r75["dense teacher top-1"] == "0.8500" and r75["top-1 vs level 0.0 (points)"] == "-5.10"
    assert r75["parameters (M)"] == "2.00 (0.59x)"
    assert r75["wall vs level 0.0"] == "0.54 (training)"  # (400 + 50) / 838
    r10 = rows["1.0"]
    assert r10["kept structure"] == "0.5 of the conv channels"
    assert r10["speedup b1 (IQR)"] == "-" and r10["gzip MB"] == "-"
    assert r10["wall s"] == "510 (status failed)"
    met, text = bench.verdict(results, setup)
    assert met == {0.75: False, 1.0: False}  # no speedup, but 15 points below level 0.0
    assert "within 2.5 points of level 0.0 top-1" in text
    assert "NOT MET (-5.10 points)" in text
    assert "no speedup at batch 1" in text
