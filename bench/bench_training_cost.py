"""Benchmark: one training step of a plain PyTorch loop vs the same step driven by the modifier
lifecycle (pruning masks + LR function), and with QAT active (issue 14, item 5).

Per model (built from a config, random init, nothing downloaded) three copies with the same
weights, the compute layers (``__COMPUTE_LAYERS__``) magnitude-pruned to ``--sparsity`` as a
sparse checkpoint would be, each trained on the same fixed batches:

* ``plain``: forward, loss, backward, ``optimizer.step()``, ``zero_grad``, a cosine LR
  scheduler step; no lifecycle (the pruned weights grow back);
* ``masks``: the same step inside the lifecycle's events, as the image trainer calls them
  (``batch_start`` -> forward -> ``loss_calculated`` -> backward -> ``optim_pre_step`` ->
  step -> ``optim_post_step`` -> ``batch_end``; ``epoch_start`` / ``epoch_end`` around
  epochs), under a recipe with a ``ConstantPruningModifier`` on the compute layers (masks
  re-applied after every step), a cosine ``LearningRateFunctionModifier`` and an
  ``EpochRangeModifier``;
* ``qat``: the same recipe plus a ``QuantizationModifier`` started at epoch 0 (observers on,
  BatchNorm statistics training), with the shipped recipes' QAT fields for the model's family.

After ``--warmup`` steps of each (QAT's modules are swapped in there), ``--reps``
repetitions each run a block of ``--block`` steps of every configuration, the order rotated
each repetition, so machine load falls on the three alike. A step is timed in parts: the
lifecycle's hooks, forward + loss, backward, optimizer (step, zero_grad, scheduler). The ratio
vs plain is the median of the per-repetition ratios (block mean over the plain block of the
same repetition), with their p25-p75; the medians' ratio is shown beside it. Before the
figures are reported, the configurations are checked to differ (masks hold the sparsity, the
plain weights grew back, QAT modules present and calibrated), so the benchmark cannot time a
plain loop three times. On a machine other jobs load, ``--threads 1`` avoids the stalls of
oversubscribed OpenMP threads.

Peak memory (:func:`memory_child`): per configuration a child process reads its resident
memory (VmRSS) with the libraries loaded, again once the model and optimizer are built, runs
``--mem-steps`` steps and reads its peak (VmHWM, else ``ru_maxrss``; on CPU the peak only
grows, hence one process each); on CUDA ``torch.cuda.max_memory_allocated``. The tensors one
forward keeps for its backward are counted too (a figure no allocator blurs). One gradual
magnitude pruning mask update (the GMP modifier's, once per ``update_frequency``) is timed on
its own.

    nice -n 10 python bench/bench_training_cost.py [--models resnet18,bert-minilm6]
        [--reps 10] [--block 1] [--warmup 2] [--mem-steps 2] [--mem-repeats 2] [--threads N]
        [--results PATH] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # also when this file is imported by path (the unit tests)
    sys.path.insert(0, HERE)

from real_runs import cpu_name  # noqa: E402  bench/real_runs.py: lscpu's name, family, model

CONFIGS = ("plain", "masks", "qat")
#: the goals of issue 14, item 5
GOAL_MASKS, GOAL_QAT_TIME, GOAL_QAT_MEMORY = 1.05, 2.0, 1.5
PARTS = ("hooks", "forward", "backward", "optimizer")


# --- models ----------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """How to build, feed and optimize one model (the settings of its family's trainer)."""

    name: str
    label: str
    build: Callable[[], nn.Module]
    #: ``make_batch(generator) -> dict`` of CPU tensors
    make_batch: Callable[[torch.Generator], dict[str, torch.Tensor]]
    #: ``forward(model, batch) -> (loss, outputs, inputs)`` as the trainer computes them
    forward: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Any, Any]]
    optimizer: str
    lr: float
    weight_decay: float
    qat_fields: dict[str, Any] = field(default_factory=dict)
    #: modules ``build`` imports (imported before the memory baseline is read)
    imports: tuple[str, ...] = ()


def _image_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple:
    outputs = model(batch["images"])
    return F.cross_entropy(outputs, batch["targets"]), outputs, batch["images"]


def resnet18_spec(image_size: int = 112, batch_size: int = 16) -> ModelSpec:
    """torchvision ResNet-18, 10 classes; the image trainer's SGD (nesterov, momentum 0.9)."""

    def build() -> nn.Module:
        from torchvision.models import resnet18

        return resnet18(weights=None, num_classes=10)

    def make_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"images": torch.randn(batch_size, 3, image_size, image_size, generator=gen),
                "targets": torch.randint(0, 10, (batch_size,), generator=gen)}

    return ModelSpec("resnet18", f"ResNet-18 {image_size} px, batch {batch_size}", build,
                     make_batch, _image_forward, "sgd", 0.01, 1e-4,
                     imports=("torchvision.models",))


def bert_spec(seq_len: int = 128, batch_size: int = 16) -> ModelSpec:
    """A 6-layer MiniLM-sized BERT for sequence classification; the NLP trainer's AdamW and
    the shipped NLP recipes' QAT fields."""

    def build() -> nn.Module:
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, vocab_size=30522, num_labels=2)
        return BertForSequenceClassification(config)

    def make_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.randint(0, 30522, (batch_size, seq_len), generator=gen),
                "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
                "labels": torch.randint(0, 2, (batch_size,), generator=gen)}

    def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple:
        outputs = model(**batch)  # the Trainer's compute_loss: the model's own loss
        return outputs.loss, outputs, {k: v for k, v in batch.items() if k != "labels"}

    return ModelSpec("bert-minilm6", f"BERT 6x384 (MiniLM size), {seq_len} tokens, batch "
                     f"{batch_size}", build, make_batch, forward, "adamw", 5e-5, 0.01,
                     {"exclude_module_types": ["LayerNorm", "Tanh"], "quantize_embeddings": True,
                      "quantize_linear_activations": False},
                     imports=("transformers", "transformers.models.bert.modeling_bert"))


class TinyCNN(nn.Module):
    """A stem conv, two pruned convs with BatchNorm and ReLU, a classifier (smoke tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.stem(x)))
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_spec() -> ModelSpec:
    def make_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {"images": torch.randn(4, 3, 16, 16, generator=gen),
                "targets": torch.randint(0, 4, (4,), generator=gen)}

    return ModelSpec("tiny", "tiny CNN 16 px, batch 4", TinyCNN, make_batch, _image_forward,
                     "sgd", 0.01, 1e-4)


def model_spec(name: str, image_size: int = 112, image_batch: int = 16, seq_len: int = 128,
               text_batch: int = 16) -> ModelSpec:
    if name == "resnet18":
        return resnet18_spec(image_size, image_batch)
    if name == "bert-minilm6":
        return bert_spec(seq_len, text_batch)
    if name == "tiny":
        return tiny_spec()
    raise SystemExit(f"unknown model '{name}' (resnet18, bert-minilm6, tiny)")


# --- recipes ---------------------------------------------------------------------------------
def recipe_text(spec: ModelSpec, config: str, epochs: float = 10.0) -> str:
    """The recipe of ``masks`` or ``qat`` (``qat`` = ``masks`` + QuantizationModifier)."""
    text = f"""version: 1.1.0
training_modifiers:
  - !EpochRangeModifier
      start_epoch: 0.0
      end_epoch: {epochs}
  - !LearningRateFunctionModifier
      lr_func: cosine
      start_epoch: 0.0
      end_epoch: {epochs}
      init_lr: {spec.lr}
      final_lr: 0.0
pruning_modifiers:
  - !ConstantPruningModifier
      start_epoch: 0.0
      params: __COMPUTE_LAYERS__
"""
    if config == "qat":
        text += "quantization_modifiers:\n  - !QuantizationModifier\n      start_epoch: 0.0\n"
        for key, value in spec.qat_fields.items():
            text += f"      {key}: {json.dumps(value)}\n"
    return text


def gmp_recipe_text(sparsity: float, epochs: float = 10.0) -> str:
    """The shipped GMP recipes' pruning modifier (init = 0.6 x target, cubic, every
    num_epochs / 40 epochs)."""
    return f"""version: 1.1.0
pruning_modifiers:
  - !GMPruningModifier
      params: __COMPUTE_LAYERS__
      init_sparsity: {round(sparsity * 0.6, 4)}
      final_sparsity: {sparsity}
      start_epoch: 0.0
      end_epoch: {epochs * 0.5}
      update_frequency: {epochs / 40}
      inter_func: cubic
"""


# --- one configuration's training loop -------------------------------------------------------
def prune_(model: nn.Module, names: list[str], sparsity: float) -> None:
    """Zero the ``sparsity`` fraction of smallest weights of each named parameter."""
    from sparsify.modifiers.masks import magnitude_mask

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].mul_(magnitude_mask(params[name], sparsity))


class Runner:
    """One configuration's model, optimizer and (except ``plain``) lifecycle; :meth:`step`
    trains one batch and returns the times of its parts in seconds."""

    def __init__(self, spec: ModelSpec, config: str, device: torch.device | str = "cpu",
                 sparsity: float = 0.8, steps_per_epoch: int = 100, seed: int = 0) -> None:
        from sparsify.modifiers.lifecycle import ModifierLifecycle
        from sparsify.modifiers.selectors import compute_layer_names
        from sparsify.recipe.parser import parse_recipe
        from sparsify.trainers.common import build_optimizer

        if config not in CONFIGS:
            raise ValueError(f"config: one of {CONFIGS}, got {config!r}")
        self.spec, self.config, self.device = spec, config, torch.device(device)
        torch.manual_seed(seed)  # the same weights in every configuration
        model = spec.build()
        self.names = compute_layer_names(model)
        prune_(model, self.names, sparsity)
        self.model = model.to(self.device).train()
        self.sparsity, self.steps_per_epoch = sparsity, steps_per_epoch
        self.lifecycle = None
        if config != "plain":  # as trainers/image_classification.py builds it
            self.lifecycle = ModifierLifecycle(parse_recipe(recipe_text(spec, config)),
                                               self.model)
            self.lifecycle.initialize_structure()
        self.optimizer = build_optimizer(self.model, spec.optimizer, spec.lr,
                                         spec.weight_decay)
        self.scheduler = None
        if self.lifecycle is None:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=10 * steps_per_epoch)
        else:
            self.lifecycle.initialize(self.optimizer, steps_per_epoch)
            self.lifecycle.epoch_start()
        self.steps = 0
        self.losses: list[float] = []

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimizer step on ``batch`` (already on the device)."""
        lifecycle, clock = self.lifecycle, self._clock
        if lifecycle is not None and self.steps and self.steps % self.steps_per_epoch == 0:
            lifecycle.epoch_end()
            lifecycle.epoch_start()
        t0 = clock()
        if lifecycle is not None:
            lifecycle.batch_start()
        t1 = clock()
        loss, outputs, inputs = self.spec.forward(self.model, batch)
        t2 = clock()
        if lifecycle is not None:
            loss = lifecycle.loss_calculated(loss, inputs, outputs)
        t3 = clock()
        loss.backward()
        t4 = clock()
        if lifecycle is not None:
            lifecycle.optim_pre_step()
        t5 = clock()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        t6 = clock()
        if lifecycle is not None:
            lifecycle.optim_post_step()
            lifecycle.batch_end()
        self.losses.append(float(loss.detach()))  # as the trainers log it
        t7 = clock()
        self.steps += 1
        return {"total": t7 - t0, "hooks": (t1 - t0) + (t3 - t2) + (t5 - t4) + (t7 - t6),
                "forward": t2 - t1, "backward": t4 - t3, "optimizer": t6 - t5}

    # --- what the configuration really does (checked before timing, and by the tests) ------
    def compute_sparsity(self) -> float:
        """Fraction of exact zeros over the compute layers' weights."""
        params = dict(self.model.named_parameters())
        zeros = sum(int((params[n].detach() == 0).sum()) for n in self.names)
        return zeros / max(sum(params[n].numel() for n in self.names), 1)

    def qat_modules(self) -> int:
        """Modules carrying fake quantization (QATConv2d, QATLinear, ...)."""
        from sparsify.quantization import QATModule

        return sum(isinstance(m, QATModule) for m in self.model.modules())

    def calibrated_observers(self) -> int:
        """Activation observers that have seen data."""
        from sparsify.quantization import FakeQuantizer

        return sum(isinstance(m, FakeQuantizer) and bool(m.initialized)
                   for m in self.model.modules())

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def check_configurations(runners: dict[str, Runner]) -> dict[str, str]:
    """Raise if the configurations do not do what they are named for; a line each."""
    out: dict[str, str] = {}
    target = min(r.sparsity for r in runners.values())
    for name, runner in runners.items():
        sparsity, qat = runner.compute_sparsity(), runner.qat_modules()
        if name == "plain":
            if runner.sparsity > 0 and sparsity >= target - 1e-3:
                raise RuntimeError("plain: the pruned weights stayed zero without masks; the "
                                   "benchmark cannot tell the configurations apart")
        elif sparsity < target - 1e-3:
            raise RuntimeError(f"{name}: compute-layer sparsity {sparsity:.3f} after "
                               f"{runner.steps} steps, the masks should hold {target}")
        if (qat > 0) != (name == "qat") or (name == "qat" and runner.calibrated_observers() == 0):
            raise RuntimeError(f"{name}: {qat} QAT modules, "
                               f"{runner.calibrated_observers()} calibrated observers")
        out[name] = (f"{name}: compute-layer sparsity {100 * sparsity:.1f}% after "
                     f"{runner.steps} steps, {qat} QAT modules, lr {runner.lr():.3g}")
    return out


# --- timing ----------------------------------------------------------------------------------
def make_batches(spec: ModelSpec, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [spec.make_batch(gen) for _ in range(n)]


def interleave(runners: dict[str, Runner], batches: list[dict[str, torch.Tensor]],
               warmup: int, reps: int, block: int) -> dict[str, list[list[dict[str, float]]]]:
    """``{config: [[step times of repetition r] for r]}``: warm-up first, then per repetition
    a block of steps of each configuration, the order rotated by one each repetition."""
    names = list(runners)
    on_device = {name: [r.to_device(b) for b in batches] for name, r in runners.items()}
    for name in names:
        for i in range(warmup):
            runners[name].step(on_device[name][i % len(batches)])
    times: dict[str, list[list[dict[str, float]]]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            times[name].append([
                runners[name].step(on_device[name][(rep * block + i) % len(batches)])
                for i in range(block)])
    return times


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def summarize(times: dict[str, list[list[dict[str, float]]]]) -> dict[str, dict[str, Any]]:
    """Per configuration: median step ms (p25, p75) and median ms of each part; vs ``plain``:
    ``ratio``, the median of the per-repetition ratios (each repetition's block mean over the
    plain block's of the same repetition: the load they ran under is alike), its p25-p75 and
    min-max, and ``median_ratio``, the ratio of the two medians."""
    out: dict[str, dict[str, Any]] = {}
    plain = times.get("plain")
    for name, reps in times.items():
        steps = [s for rep in reps for s in rep]
        p25, med, p75 = _quantiles([1000 * s["total"] for s in steps])
        entry: dict[str, Any] = {"steps": len(steps), "median_ms": med, "p25_ms": p25,
                                 "p75_ms": p75}
        for part in PARTS:
            entry[f"{part}_ms"] = statistics.median(1000 * s[part] for s in steps)
        if plain is not None:
            paired = [statistics.fmean(s["total"] for s in mine)
                      / statistics.fmean(s["total"] for s in theirs)
                      for mine, theirs in zip(reps, plain)]
            entry["paired_p25"], entry["ratio"], entry["paired_p75"] = _quantiles(paired)
            entry["paired_min"], entry["paired_max"] = min(paired), max(paired)
        out[name] = entry
    if "plain" in out:
        for entry in out.values():
            entry["median_ratio"] = entry["median_ms"] / out["plain"]["median_ms"]
            entry["hooks_share"] = entry["hooks_ms"] / out["plain"]["median_ms"]
    return out


def time_gmp_update(spec: ModelSpec, sparsity: float, device: torch.device | str = "cpu",
                    repeats: int = 2) -> float:
    """Median ms of one gradual-magnitude-pruning mask update (scores, top-k, masks applied)
    over the compute layers, through the GMP modifier of a lifecycle."""
    from sparsify.modifiers.lifecycle import ModifierLifecycle
    from sparsify.recipe.parser import parse_recipe

    torch.manual_seed(0)
    model = spec.build().to(device)
    lifecycle = ModifierLifecycle(parse_recipe(gmp_recipe_text(sparsity)), model)
    lifecycle.initialize(None, 100)
    lifecycle.epoch_start()
    lifecycle.batch_start()  # starts the modifier: its first mask update
    gmp = lifecycle.modifiers_of("GMPruningModifier")[0]
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        gmp._update_masks(lifecycle.state, 0.25 * (i + 1))
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


# --- peak memory (one child process per configuration) ---------------------------------------
def _proc_status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (Linux) in MB."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    """The current resident memory (VmRSS), else the peak so far."""
    now = _proc_status_mb("VmRSS")
    return now if now is not None else _maxrss_mb()


def _maxrss_mb() -> float:
    """The process's peak resident memory: VmHWM (Linux), else ``ru_maxrss``. Not
    ``ru_maxrss`` on Linux: it survives ``exec``, so a child started by this (large) process
    would report the parent's resident memory at the fork as its own peak."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def saved_for_backward_mb(runner: Runner, batch: dict[str, torch.Tensor]) -> float:
    """MB of the tensors one forward keeps for its backward, parameters left out (each
    storage once): activations, fake-quantized weight copies, straight-through masks."""
    params = {p.untyped_storage().data_ptr() for p in runner.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = runner.spec.forward(runner.model, batch)
    loss.backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return sum(seen.values()) / 2**20


def memory_child(spec: ModelSpec, config: str, steps: int, device: str, sparsity: float
                 ) -> dict[str, float]:
    """Build one configuration, then train ``steps`` steps; memory in MB.

    * ``runtime``: resident memory with every library imported and one step of a tiny model
      trained (code loaded on first use), before the model exists;
    * ``built``: after the model, its masks and QAT modules (the lifecycle adds them at its
      first epoch's start) and the optimizer are built, no gradients or optimizer state yet;
    * ``peak``: the process's peak after the steps; ``training`` = peak - runtime (what the
      model and its training hold: on CUDA ``max_memory_allocated``, which counts the same);
      ``increase`` = peak - built. On CPU the allocator re-uses memory freed while building
      (the pruning's temporaries) for what comes next, so a buffer made at build time (the
      masks) may show in ``increase`` instead of ``built``; ``training`` does not depend on it.
    * ``saved``: the tensors one forward keeps for its backward (:func:`saved_for_backward_mb`).
    """
    import gc
    import importlib

    for name in (*spec.imports, "sparsify.modifiers.lifecycle", "sparsify.recipe.parser",
                 "sparsify.quantization", "sparsify.trainers.common"):
        importlib.import_module(name)
    # the code the steps load on first use (autograd, kernels, QAT modules): a tiny model's
    # step under the same configuration, before the baseline is read
    tiny = tiny_spec()
    Runner(tiny, config, device, sparsity).step(
        {k: v.to(device) for k, v in make_batches(tiny, 1)[0].items()})
    gc.collect()
    cuda = torch.device(device).type == "cuda"
    runtime = 0.0 if cuda else _rss_mb()
    runner = Runner(spec, config, device, sparsity)
    batches = [runner.to_device(b) for b in make_batches(spec, min(steps, 2))]
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        built = torch.cuda.memory_allocated() / 2**20
    else:
        built = _rss_mb()
    for i in range(steps):
        runner.step(batches[i % len(batches)])
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _maxrss_mb()
    return {"runtime_mb": runtime, "built_mb": built, "peak_mb": peak,
            "training_mb": peak - runtime, "increase_mb": peak - built,
            "saved_mb": saved_for_backward_mb(runner, batches[0]),
            "qat_modules": runner.qat_modules(), "sparsity": runner.compute_sparsity()}


def measure_memory(args: argparse.Namespace, model: str) -> dict[str, dict[str, float]]:
    """Per configuration, the median over ``--mem-repeats`` child processes (run in turn:
    plain, masks, qat, plain, ...) of each figure."""
    runs: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    for _ in range(args.mem_repeats):
        for config in CONFIGS:
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", config,
                   "--models", model, "--mem-steps", str(args.mem_steps), "--device",
                   args.device, "--sparsity", str(args.sparsity), "--image-size",
                   str(args.image_size), "--image-batch", str(args.image_batch), "--seq-len",
                   str(args.seq_len), "--text-batch", str(args.text_batch)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"memory child {model}/{config} failed:\n"
                                   f"{done.stderr[-3000:]}")
            runs[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {config: {key: statistics.median(run[key] for run in found) for key in found[0]}
            for config, found in runs.items()}


# --- report ----------------------------------------------------------------------------------
def _verdict(value: float, goal: float) -> str:
    return f"{'met' if value <= goal else 'MISSED'} ({value:.2f}x, goal <= {goal:g}x)"


def _x(memory: dict[str, dict[str, float]], config: str, key: str) -> str:
    return f"{memory[config][key] / memory['plain'][key]:.2f}x"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | config | step ms median (p25-p75) | vs plain: paired median (p25-p75) "
             "| ratio of medians | hooks ms (% of plain step) | forward ms | backward ms "
             "| optimizer ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in results.values():
        stats = result["timing"]
        for config in CONFIGS:
            s = stats[config]
            ratio = ("1.00x" if config == "plain" else
                     f"{s['ratio']:.3f}x ({s['paired_p25']:.3f}-{s['paired_p75']:.3f})")
            lines.append(
                f"| {result['label']} | {config} | {s['median_ms']:.0f} ({s['p25_ms']:.0f}-"
                f"{s['p75_ms']:.0f}) | {ratio} | {s['median_ratio']:.3f}x "
                f"| {s['hooks_ms']:.2f} ({100 * s['hooks_share']:.2f}%) | {s['forward_ms']:.0f} "
                f"| {s['backward_ms']:.0f} | {s['optimizer_ms']:.0f} |")
    if not any("memory" in r for r in results.values()):
        return "\n".join(lines)
    lines += ["", "| model | config | peak RSS MB | peak - runtime MB (training) "
              "| peak - built MB | saved for backward MB |", "|---|---|---|---|---|---|"]
    for result in results.values():
        memory = result.get("memory")
        for config in CONFIGS if memory else ():
            m = memory[config]
            cells = [(m["peak_mb"], "peak_mb"), (m["training_mb"], "training_mb"),
                     (m["increase_mb"], "increase_mb"), (m["saved_mb"], "saved_mb")]
            lines.append(f"| {result['label']} | {config} | " + " | ".join(
                f"{value:.0f}" + ("" if config == "plain" else f" ({_x(memory, config, key)})")
                for value, key in cells) + " |")
    return "\n".join(lines)


def verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for result in results.values():
        stats, memory = result["timing"], result.get("memory")
        masks = stats["masks"]
        parts = [f"masks + LR {_verdict(masks['ratio'], GOAL_MASKS)} on the paired step "
                 f"ratio, the lifecycle's hooks {100 * masks['hooks_share']:.2f}% of a plain "
                 "step",
                 f"QAT step {_verdict(stats['qat']['ratio'], GOAL_QAT_TIME)}"]
        if memory:
            ratio = memory["qat"]["training_mb"] / memory["plain"]["training_mb"]
            parts.append(f"QAT peak memory {_verdict(ratio, GOAL_QAT_MEMORY)} on the peak over "
                         f"the runtime (whole peak {_x(memory, 'qat', 'peak_mb')}, over the "
                         f"built model {_x(memory, 'qat', 'increase_mb')}, saved for backward "
                         f"{_x(memory, 'qat', 'saved_mb')})")
        lines.append(f"- {result['label']}: " + "; ".join(parts) + ".")
    return lines


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], argv: list[str]
           ) -> str:
    device = args.device if args.device != "cpu" else \
        f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if args.device == "cuda":
        device = f"CUDA: {torch.cuda.get_device_name()}, torch {torch.__version__}"
    lines = ["    nice -n 10 python bench/bench_training_cost.py " + " ".join(argv), "",
             f"{device}. {args.warmup} warm-up steps per configuration, then {args.reps} "
             f"repetitions of {args.block} steps of each, interleaved (order rotated); "
             f"compute layers pruned to {args.sparsity:.0%}; peak memory after "
             f"{args.mem_steps} steps, one process per configuration, median of "
             f"{args.mem_repeats} in turn.", "",
             table(results), "",
             "Checked after the timed steps (the configurations differ):", ""]
    for result in results.values():
        lines += [f"- {result['label']}: " + "; ".join(result["checks"].values())]
    lines += ["", "One GMP mask update (every `update_frequency`, not in the steps above):", ""]
    for result in results.values():
        if "gmp_update_ms" in result:
            plain = result["timing"]["plain"]["median_ms"]
            lines.append(f"- {result['label']}: {result['gmp_update_ms']:.0f} ms "
                         f"({result['gmp_update_ms'] / plain:.2f} plain steps)")
    lines += ["", "Goals (issue 14):", ""] + verdicts(results)
    return "\n".join(lines) + "\n"


def run_model(args: argparse.Namespace, name: str) -> dict[str, Any]:
    spec = model_spec(name, args.image_size, args.image_batch, args.seq_len, args.text_batch)
    runners = {config: Runner(spec, config, args.device, args.sparsity) for config in CONFIGS}
    batches = make_batches(spec, args.batches)
    times = interleave(runners, batches, args.warmup, args.reps, args.block)
    result = {"label": spec.label, "timing": summarize(times),
              "checks": check_configurations(runners)}
    del runners
    if not args.no_gmp:
        result["gmp_update_ms"] = time_gmp_update(spec, args.sparsity, args.device)
    if not args.no_memory:
        result["memory"] = measure_memory(args, name)
    print(f"[{name}] " + ", ".join(f"{c} {s['median_ms']:.1f} ms"
                                   for c, s in result["timing"].items()), file=sys.stderr)
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,bert-minilm6",
                        help="comma-separated: resnet18, bert-minilm6, tiny")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=2, help="steps per configuration")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--block", type=int, default=1, help="steps per configuration and rep")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled")
    parser.add_argument("--mem-steps", type=int, default=2)
    parser.add_argument("--mem-repeats", type=int, default=2,
                        help="child processes per configuration (median)")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 on a machine others load")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--image-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--text-batch", type=int, default=16)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-gmp", action="store_true")
    parser.add_argument("--results", help="also write the markdown report here")
    parser.add_argument("--memory-child", choices=CONFIGS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if args.memory_child:
        spec = model_spec(names[0], args.image_size, args.image_batch, args.seq_len,
                          args.text_batch)
        print(json.dumps(memory_child(spec, args.memory_child, args.mem_steps, args.device,
                                      args.sparsity)))
        return ""
    results = {name: run_model(args, name) for name in names}
    text = report(args, results, argv)
    print(text)
    if args.results:
        with open(args.results, "w", encoding="utf-8") as fh:
            fh.write(text)
    return text


if __name__ == "__main__":
    main()
