"""Benchmark: the speed of the catalog's tiers, what a run without ``--model`` exports at
``--optim-level`` 0.0, 0.5 and 1.0 (issue 14).

The default path (no ``--model``) takes the catalog's largest tier at 0.0 (dense FP32 export),
the medium tier at 0.5 and the smallest at 1.0 (both pruned + INT8). For each family whose
architectures build offline, the tier each level picks is read from the real plan
(``plan.build_plan``: the catalog entry, with a ``sparse`` entry's ``fallback: dense``), its
architecture built from its config with a fixed random initialisation (speed does not depend on
the weights' values) and exported as the product exports it:

- level 0.0: the dense model to FP32 ONNX (``export_onnx``, the export of a run without QAT);
- levels 0.5 and 1.0: magnitude pruning of the plan recipe's ``__COMPUTE_LAYERS__`` to the
  level's target sparsity, the QAT structure of the plan recipe's ``QuantizationModifier``
  (``prepare_qat_`` with its ``quantization_config``; YOLO: the DFL kept in float and the
  SiLUs quantized as the detection trainer does), observers calibrated on a few random batches
  and frozen, BatchNorm folded, exported to INT8 ONNX; and the tier's dense FP32 export, the
  baseline the run's speed check (``export/fallback.py``) times the INT8 file against: when
  INT8 is slower there, the run ships its weights in FP32 instead, which runs as fast as that
  dense file (ONNX Runtime has no sparse kernels).

All files of a family are timed interleaved (``measure_interleaved``: in turn, rotated order,
within each repetition) at batch 1 and 32: images at the family's default size (224 for
classification, 640 for YOLO), text at 128 tokens. The table gives the median latency and the
median (interquartile range) of the per-repetition speedups over the level-0.0 file.

    nice -n 10 .venv/bin/python bench/bench_catalog_tiers.py [--out /tmp/bench_catalog_tiers]
        [--family image_classification --family nlp --family detection --family segmentation]
        [--runs 10] [--runs-b32 3] [--results bench/results/catalog_tiers.md]

Default families: image classification, NLP, detection (about 10 minutes on 2 loaded cores;
YOLO at batch 32 gets one repetition unless ``--runs-b32`` says otherwise).

Needs: pip install -e '.[vision,nlp,detection]' (a family whose package is missing is skipped,
with the reason printed).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The levels of the default path: 0.0 (largest, dense FP32), 0.5 (medium), 1.0 (smallest).
LEVELS = (0.0, 0.5, 1.0)
#: A use case per catalog family (the NLP use cases share one catalog family).
USE_CASES = {"image_classification": "image_classification", "nlp": "text_classification",
             "detection": "object_detection", "segmentation": "segmentation"}
#: Families timed by default (segmentation: ``--family segmentation``; its -seg models time like
#: detection's plus a mask branch, and YOLOv8l-seg at 640 doubles the run's length).
DEFAULT_FAMILIES = ("image_classification", "nlp", "detection")
#: Classes of the head: a user's data set decides in a run; these are typical.
NUM_CLASSES = {"image_classification": 10, "nlp": 2, "detection": 80, "segmentation": 80}
IMAGE_SIZE = {"image_classification": 224, "detection": 640, "segmentation": 640}
SEQ_LENGTH = 128
BATCHES = (1, 32)
#: BERT-base dimensions (oBERT's 12-, 6- and 3-layer models differ only in depth).
BERT_BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
             "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2}


@dataclass
class Tier:
    """What one optim level takes on the default path, from the plan."""

    family: str
    level: float
    tier: str
    architecture: str
    stub: str
    quantized: bool
    pruned: bool
    target_sparsity: float
    recipe: str
    recipe_args: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def format(self) -> str:
        return "INT8" if self.quantized else "FP32"


def tier_lookup(family: str, levels: tuple[float, ...] = LEVELS) -> list[Tier]:
    """The tier, architecture and scheme of each level for ``family``, as ``build_plan`` (the
    plan of a run without ``--model``) chooses them. No torch, no network."""
    from sparsify.plan import build_plan
    from sparsify.usecases import resolve_use_case

    use_case = resolve_use_case(USE_CASES[family])
    tiers = []
    for level in levels:
        plan = build_plan(use_case, level)
        entry = plan.model.entry
        if entry is None:  # pragma: no cover - the catalog path always has an entry
            raise RuntimeError(f"{family} at {level}: the plan names no catalog entry")
        tiers.append(Tier(family, level, plan.band.tier, entry.architecture, entry.stub,
                          plan.band.quantized, plan.band.pruned, plan.target_sparsity,
                          plan.recipe, dict(plan.recipe_args), list(plan.model.notes)))
    return tiers


def bert_layers(architecture: str) -> int:
    """Encoder layers named by an NLP catalog architecture (``bert-base (12 layers)`` -> 12)."""
    found = re.search(r"(\d+)\s*layers?", architecture)
    if not found:
        raise ValueError(f"no layer count in the NLP architecture {architecture!r}")
    return int(found.group(1))


# --------------------------------------------------------------------------------------------
# Building a tier's model and its inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Built:
    """A model ready to export, how to export it, and what the pipeline treats as float."""

    model: Any
    sample: Any  # export sample inputs (a tuple, or a dict for keyword inputs)
    onnx_args: dict[str, Any]
    float_modules: list[str] = field(default_factory=list)
    yolo: bool = False
    vocab: int = BERT_BASE["vocab_size"]


def missing_package(family: str) -> str | None:
    """Why ``family`` cannot be built here (a package missing), or ``None``."""
    needs = {"image_classification": "torchvision", "nlp": "transformers",
             "detection": "ultralytics", "segmentation": "ultralytics"}[family]
    try:
        __import__(needs)
    except ImportError as exc:
        return f"{needs} is not installed ({exc}); pip install -e '.[{_extra(family)}]'"
    return None


def _extra(family: str) -> str:
    return {"image_classification": "vision", "nlp": "nlp"}.get(family, "detection")


def build(tier: Tier, seed: int = 0, bert_dims: dict[str, int] | None = None) -> Built:
    """The tier's architecture from its config, randomly initialised (``seed``); NLP tiers
    have BERT-base's dimensions unless ``bert_dims`` says otherwise (a test's tiny BERT)."""
    import torch

    torch.manual_seed(seed)
    if tier.family == "image_classification":
        return _build_classifier(tier)
    if tier.family == "nlp":
        return _build_bert(tier, bert_dims or BERT_BASE)
    return _build_yolo(tier)


def _build_classifier(tier: Tier) -> Built:
    import torch

    from sparsify.trainers.vision_models import build_arch

    size = IMAGE_SIZE[tier.family]
    model = build_arch(tier.architecture, NUM_CLASSES[tier.family]).eval()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    return Built(model, (torch.zeros(1, 3, size, size),),
                 {"input_names": ["input"], "output_names": ["logits"], "dynamic_axes": axes})


def _build_bert(tier: Tier, dims: dict[str, int]) -> Built:
    import torch
    import transformers

    from sparsify.export.nlp import OutputTuple

    config = transformers.BertConfig(num_hidden_layers=bert_layers(tier.architecture),
                                     num_labels=NUM_CLASSES[tier.family], **dims)
    model = transformers.BertForSequenceClassification(config).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    vocab = dims["vocab_size"]
    sample = {k: torch.from_numpy(v) for k, v in text_inputs(2, 16, vocab=vocab).items()}
    wrapped = OutputTuple(model, ("logits",))
    return Built(wrapped, sample,
                 {"input_names": names, "output_names": ["logits"], "dynamic_axes": axes},
                 vocab=vocab)


def _build_yolo(tier: Tier) -> Built:
    import torch
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    from sparsify.trainers.yolo_models import freeze_dfl_

    segment = tier.family == "segmentation"
    cls = SegmentationModel if segment else DetectionModel
    model = cls(f"{tier.architecture}.yaml", nc=NUM_CLASSES[tier.family], ch=3, verbose=False)
    dfl = freeze_dfl_(model)  # as load_yolo_model: the DFL's fixed conv is a buffer
    size = IMAGE_SIZE[tier.family]
    outputs = ["output0", "output1"] if segment else ["output0"]
    axes = {name: {0: "batch"} for name in ["images", *outputs]}
    return Built(model.eval(), (torch.zeros(1, 3, size, size),),
                 {"input_names": ["images"], "output_names": outputs, "dynamic_axes": axes},
                 float_modules=dfl, yolo=True)


def text_inputs(batch: int, length: int = SEQ_LENGTH, seed: int = 0,
                vocab: int = BERT_BASE["vocab_size"]) -> dict[str, np.ndarray]:
    """BERT inputs: random word-piece ids (no padding), one segment."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 2), vocab, (batch, length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}


def timing_inputs(family: str, batch: int) -> dict[str, np.ndarray]:
    if family == "nlp":
        return text_inputs(batch)
    rng = np.random.default_rng(batch)
    size = IMAGE_SIZE[family]
    if family == "image_classification":
        return {"input": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}
    return {"images": rng.random((batch, 3, size, size), dtype=np.float32)}


# --------------------------------------------------------------------------------------------
# Exporting as the product does
# --------------------------------------------------------------------------------------------


def _export_module(built: Built, model: Any) -> Any:
    """What ``export_onnx`` receives: YOLO models go through the detection export's own
    preparation (conv+bn fusion of a float model, raw NMS-free head)."""
    if not built.yolo:
        return model
    from sparsify.export.detection import _fuse_fp32, prepare_for_export

    return prepare_for_export(_fuse_fp32(copy.deepcopy(model)))


def export_fp32(built: Built, path: Path) -> Path:
    """The dense FP32 export (level 0.0's model, and every tier's speed-check baseline)."""
    from sparsify.export.onnx_export import export_onnx

    return export_onnx(_export_module(built, built.model).eval(), built.sample, path,
                       **built.onnx_args)


def prune_(model: Any, recipe: Any, sparsity: float) -> list[str]:
    """Magnitude-prune the weights the recipe's pruning modifier (GMP, OBS or constant) selects
    to ``sparsity``, each tensor on its own (ONNX Runtime's speed does not depend on which
    weights are zero); returns their names."""
    import torch

    from sparsify.modifiers.masks import magnitude_mask
    from sparsify.modifiers.selectors import select_parameters

    gmp = [m.build() for m in recipe.of_type("GMPruningModifier", "OBSPruningModifier",
                                              "ConstantPruningModifier")]
    if not gmp or sparsity <= 0:
        return []
    params = select_parameters(model, gmp[0].params)
    with torch.no_grad():
        for param in params.values():
            param.mul_(magnitude_mask(param, sparsity, getattr(gmp[0], "mask_type",
                                                              "unstructured")))
    return list(params)


def export_int8(built: Built, tier: Tier, path: Path) -> tuple[Path, float]:
    """Prune to the tier's target, prepare QAT from the plan's recipe, calibrate, fold, export
    INT8. Returns the file and the sparsity reached over the pruned weights."""
    from sparsify.export.onnx_export import export_onnx
    from sparsify.quantization import disable_observers_, fold_qat_batchnorm_, prepare_qat_
    from sparsify.recipe.parser import load_recipe

    recipe = load_recipe(tier.recipe, tier.recipe_args)
    quant = [m.build() for m in recipe.of_type("QuantizationModifier")]
    if not quant:
        raise RuntimeError(f"{tier.recipe} has no QuantizationModifier: level {tier.level} "
                           "would not export INT8")
    model = copy.deepcopy(built.model)
    names = prune_(model, recipe, tier.target_sparsity)
    params = dict(model.named_parameters())
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    total = sum(params[n].numel() for n in names)
    prepare_qat_(model, quant[0].quantization_config(built.float_modules))
    if built.yolo:
        from sparsify.trainers.yolo_models import quantize_conv_activations_

        quantize_conv_activations_(model)  # DetectionTask._qat_started
    model.train()  # observers see the batches as in QAT (dropout / BatchNorm as in training)
    _calibrate(built, model)
    disable_observers_(model)
    model.eval()
    fold_qat_batchnorm_(model)
    out = export_onnx(_export_module(built, model), built.sample, path, **built.onnx_args)
    return out, (zeros / total if total else 0.0)


def _calibrate(built: Built, model: Any) -> None:
    """Two forward passes that feed the observers (the values do not matter for speed)."""
    import torch

    with torch.no_grad():
        for _ in range(2):
            if isinstance(built.sample, dict):  # text: longer random sequences
                model(**{k: torch.from_numpy(v)
                         for k, v in text_inputs(4, 64, vocab=built.vocab).items()})
            else:
                shape = [1 if built.yolo else 4, *built.sample[0].shape[1:]]
                model(torch.rand(shape) if built.yolo else torch.randn(shape))


# --------------------------------------------------------------------------------------------
# One family: export every file, time them interleaved
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One ONNX file: a level's own export (``role`` ``level``) or, for an INT8 level, the
    tier's dense FP32 export its speed check compares with (``role`` ``baseline``)."""

    tier: Tier
    fmt: str
    path: Path
    params_m: float
    sparsity: float
    role: str
    int_kernels: int = 0

    @property
    def name(self) -> str:
        level = f"{self.tier.level:.1f}"
        return f"{level} {self.fmt}" if self.role == "level" else f"({level}) {self.fmt}"


def export_family(family: str, out: Path) -> list[Row]:
    """Build and export every level's tier of ``family`` into ``out``."""
    from sparsify.export.inspect import integer_kernel_count, optimized_graph_op_counts

    rows: list[Row] = []
    for tier in tier_lookup(family):
        start = time.perf_counter()
        built = build(tier)
        inner = built.model.model if family == "nlp" else built.model  # OutputTuple's model
        params = sum(p.numel() for p in inner.parameters()) / 1e6
        stem = re.sub(r"[^A-Za-z0-9_.-]", "", f"{family}_{tier.level:.1f}_{tier.architecture}"
                      .replace(" ", "_"))
        if tier.quantized:
            path, sparsity = export_int8(built, tier, out / f"{stem}_int8.onnx")
            kernels = integer_kernel_count(optimized_graph_op_counts(path))
            rows.append(Row(tier, "INT8", path, params, sparsity, "level", kernels))
        fp32 = export_fp32(built, out / f"{stem}_fp32.onnx")
        rows.append(Row(tier, "FP32", fp32, params, 0.0,
                        "baseline" if tier.quantized else "level"))
        print(f"  {family} {tier.level:.1f}: {tier.architecture} exported in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return rows


def time_family(family: str, rows: list[Row], runs: dict[int, int], warmups: dict[int, int]
                ) -> dict[int, dict[str, list[float]]]:
    """``{batch: {row name: [ms per repetition]}}``, all files of the family in turn."""
    from sparsify.export.inspect import measure_interleaved

    files = {r.name: r.path for r in rows}
    times: dict[int, dict[str, list[float]]] = {}
    for batch in BATCHES:
        start = time.perf_counter()
        times.update(measure_interleaved(files, lambda b: timing_inputs(family, b), (batch,),
                                         warmup=warmups[batch], runs=runs[batch]))
        print(f"  {family} batch {batch}: {warmups[batch]} + {runs[batch]} repetitions in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return times


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """``lscpu``'s model name, family and model, the CPU count and the vector extensions that
    matter for INT8 (AVX2, AVX-512, VNNI)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def get(key: str) -> str:
        return fields.get(key, "?").strip()

    flags = get("Flags").split()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return (f"{get('Model name')}, CPU family {get('CPU family')}, model {get('Model')}, "
            f"{get('CPU(s)')} CPUs ({', '.join(isa) if isa else 'no AVX2'}"
            f"{'' if any('vnni' in f for f in isa) else ', no VNNI'})")


def _cell(q: tuple[float, float, float]) -> str:
    return f"{q[1]:.2f}x ({q[0]:.2f}-{q[2]:.2f})"


@dataclass
class Shipped:
    """What a level ships on this machine and its speed over level 0.0 per batch size."""

    level: float
    fmt: str
    speedup: dict[int, tuple[float, float, float]]
    row: str


def shipped_per_level(rows: list[Row], times: dict[int, dict[str, list[float]]]
                      ) -> list[Shipped]:
    """Each level's shipped file: INT8, unless the run's speed check (``fallback.is_slower``:
    the upper quartile of INT8's paired speedups over the tier's dense FP32 below 1.0 at a
    batch size) reads it slower; then the trained weights in FP32, which run as the tier's
    dense FP32 file does."""
    from sparsify.export.inspect import paired_speedups, quartiles

    ref = reference(rows)
    out = []
    for r in rows:
        if r.role != "level":
            continue
        name, fmt = r.name, r.fmt
        if r.tier.quantized:
            base = f"({r.tier.level:.1f}) FP32"
            if any(quartiles(paired_speedups(times[b][name], times[b][base]))[2] < 1.0
                   for b in BATCHES):
                name, fmt = base, "FP32 (INT8 slower)"
        out.append(Shipped(r.tier.level, fmt, {
            b: quartiles(paired_speedups(times[b][name], times[b][ref])) for b in BATCHES},
            name))
    return out


def reference(rows: list[Row]) -> str:
    """The level-0.0 file's name (the largest tier in dense FP32)."""
    return next(r.name for r in rows if r.role == "level" and not r.tier.quantized)


def family_table(rows: list[Row], times: dict[int, dict[str, list[float]]]) -> list[str]:
    """The markdown table of one family."""
    from sparsify.export.deployment import gzip_size
    from sparsify.export.inspect import paired_speedups, quartiles

    ref = reference(rows)
    lines = ["| level | tier | architecture | format | params (M) | pruned weights' sparsity "
             "| integer kernels | ONNX gzip (MB) | b1 ms | b1 speedup vs 0.0 | b32 ms "
             "| b32 speedup vs 0.0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for batch in BATCHES:
            q = quartiles(paired_speedups(times[batch][r.name], times[batch][ref]))
            cells += [f"{np.median(times[batch][r.name]):.1f}",
                      "1.00x" if r.name == ref else _cell(q)]
        level = f"{r.tier.level:.1f}" if r.role == "level" else \
            f"({r.tier.level:.1f}: its dense baseline)"
        sparsity = f"{r.sparsity:.2f}" if r.fmt == "INT8" else "0"
        kernels = str(r.int_kernels) if r.fmt == "INT8" else "-"
        lines.append(f"| {level} | {r.tier.tier} | {r.tier.architecture} | {r.fmt} | "
                     f"{r.params_m:.1f} | {sparsity} | {kernels} | "
                     f"{gzip_size(r.path) / 1e6:.1f} | " + " | ".join(cells) + " |")
    return lines


def summary(family: str, rows: list[Row], times: dict[int, dict[str, list[float]]]) -> str:
    """One sentence: what each level ships and its speedup over 0.0, and 1.0 over 0.5."""
    from sparsify.export.inspect import paired_speedups, quartiles

    shipped = shipped_per_level(rows, times)
    parts = [f"level {s.level:.1f} ships {s.fmt}: " + ", ".join(
        f"{_cell(s.speedup[b])} at b{b}" for b in BATCHES)
        for s in shipped if s.level != 0.0]
    by_level = {s.level: s.row for s in shipped}
    if 0.5 in by_level and 1.0 in by_level:
        parts.append("level 1.0 over level 0.5: " + ", ".join(
            f"{_cell(quartiles(paired_speedups(times[b][by_level[1.0]], times[b][by_level[0.5]])))}"
            f" at b{b}" for b in BATCHES))
    return f"{family}, speedup over level 0.0 of what each level ships: " + "; ".join(parts) + "."


def render(results: dict[str, tuple[list[Row], dict, dict]],
           skipped: dict[str, str], command: str) -> str:
    import onnxruntime
    import torch

    sizes = ", ".join(f"{f} {IMAGE_SIZE[f]}x{IMAGE_SIZE[f]}" for f in results if f in IMAGE_SIZE)
    out = [f"CPU: {cpu_name()}; onnxruntime {onnxruntime.__version__}, torch "
           f"{torch.__version__}.", "",
           f"    {command}", "",
           "Each level's model as a run without `--model` exports it: the tier and recipe from "
           "`plan.build_plan`, the architecture built from its config with a fixed random "
           "initialisation (speed does not depend on the weights' values); INT8 = magnitude-"
           "pruned to the level's target sparsity (the recipe's `__COMPUTE_LAYERS__`), QAT "
           "structure of the recipe's `QuantizationModifier`, observers calibrated on two random "
           "batches, BatchNorm folded, `export_onnx`. The `(level: its dense baseline)` rows are "
           "the tier's dense FP32 export, what the run's speed check times INT8 against (a run "
           "ships its weights in FP32 instead when INT8 is slower; ONNX Runtime has no sparse "
           "kernels, so that runs as fast as this row). All files of a family timed interleaved "
           "(`measure_interleaved`, in turn, rotated order); ms = median latency; speedup = "
           "level-0.0 latency / this file's latency within each repetition: median "
           f"(interquartile range). Text: {SEQ_LENGTH} tokens; images: {sizes or '-'}.", ""]
    for family, (rows, times, runs) in results.items():
        reps = ", ".join(f"b{b}: {runs[b][0]} warm-up + {runs[b][1]} repetitions"
                         for b in BATCHES)
        out += [f"### {family}", "", f"Timing: {reps}.", "", *family_table(rows, times), "",
                summary(family, rows, times), ""]
        fallbacks = sorted({r.tier.architecture for r in rows if r.tier.notes})
        if fallbacks:
            out += ["The pruned levels' sparse catalog entries are not on this machine (local "
                    "zoo / SparseZoo cache), so the plan takes the tier's dense model and prunes "
                    f"it gradually (plan note): {', '.join(fallbacks)}.", ""]
    for family, why in skipped.items():
        out += [f"### {family}", "", f"Skipped: {why}", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_catalog_tiers"),
                        help="folder for the ONNX files (default /tmp/bench_catalog_tiers)")
    parser.add_argument("--family", action="append", choices=sorted(USE_CASES),
                        help="only these families (repeatable); default: "
                             + ", ".join(DEFAULT_FAMILIES))
    parser.add_argument("--runs", type=int, default=10,
                        help="interleaved repetitions at batch 1 (default 10)")
    parser.add_argument("--runs-b32", type=int, default=None,
                        help="repetitions at batch 32 (default 3; YOLO families 1: YOLOv8l "
                             "at 640x640 takes about a minute per batch of 32 on 2 cores)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed repetitions at batch 1 (default 2; batch 32: 1, none "
                             "for YOLO)")
    parser.add_argument("--results", type=Path, default=Path("bench/results/catalog_tiers.md"),
                        help="write the markdown here (default bench/results/catalog_tiers.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # QAT on Ultralytics models pairs conv and BatchNorm by module name (torch.fx cannot trace
    # them) and says so once per pair
    logging.getLogger("sparsify.quantization.graph").setLevel(logging.ERROR)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.out / "ultralytics"))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[list[Row], dict, dict]] = {}
    skipped: dict[str, str] = {}
    started = time.perf_counter()
    for family in args.family or DEFAULT_FAMILIES:
        why = missing_package(family)
        if why:
            print(f"skipping {family}: {why}", file=sys.stderr)
            skipped[family] = why
            continue
        print(f"{family}: exporting", flush=True)
        rows = export_family(family, args.out)
        yolo = family in ("detection", "segmentation")
        runs = {1: args.runs, 32: args.runs_b32 or (1 if yolo else 3)}
        warmups = {1: args.warmup, 32: 0 if yolo else 1}
        results[family] = (rows, time_family(family, rows, runs, warmups),
                           {b: (warmups[b], runs[b]) for b in BATCHES})
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    command = "nice -n 10 .venv/bin/python bench/bench_catalog_tiers.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    text = render(results, skipped, command.strip())
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
