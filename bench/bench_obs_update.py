"""Benchmark: what one OBS mask update costs next to a training step (issue 13).

Per model (built from a config, random init, nothing downloaded) the compute layers
(``__COMPUTE_LAYERS__``, what the shipped recipes prune) get ``--grads`` real gradients from
forward/backward passes on random batches of the model's benchmark shape. Timed, each in
seconds and in training steps of the same model:

* one plain training step (forward, loss, backward, optimizer step), the median of ``--steps``;
* adding one gradient to the block Fisher (``BlockFisher.add``, what every collecting step pays);
* one global OBS update (scores, ranking, the OBS weight update, masks written back) from
  ``--from`` to ``--to`` sparsity, per ``--blocks`` Fisher block size.

The OBS modifier prunes by magnitude when its updates are fewer than ``fisher_block_size / 2``
steps apart; this table is why (an update of ResNet-18 costs tens of training steps).

    python bench/bench_obs_update.py [--models resnet18,bert-minilm6] [--blocks 32,16]
        [--grads 4] [--threads N] [--results PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from bench_training_cost import ModelSpec, model_spec, prune_  # noqa: E402
from real_runs import cpu_name  # noqa: E402


def _optimizer(spec: ModelSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, nesterov=True,
                           weight_decay=spec.weight_decay)


def measure(spec: ModelSpec, blocks: list[int], grads: int, steps: int, sparsity_from: float,
            sparsity_to: float) -> dict:
    """Seconds of a plain step, of one Fisher add and of one OBS update per block size."""
    from sparsify.modifiers.obs_math import BlockFisher, add_gradients, obs_prune_
    from sparsify.modifiers.selectors import compute_layer_names

    torch.manual_seed(0)
    model = spec.build()
    names = compute_layer_names(model)
    prune_(model, names, sparsity_from)
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    masks = [w != 0 for w in weights]
    optimizer = _optimizer(spec, model)
    gen = torch.Generator().manual_seed(0)
    batches = [spec.make_batch(gen) for _ in range(max(grads, steps))]

    step_s, gradients = [], []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        loss, _, _ = spec.forward(model, batch)
        loss.backward()
        if i < grads:
            gradients.append([w.grad.detach().clone() for w in weights])
        optimizer.step()
        optimizer.zero_grad()
        step_s.append(time.perf_counter() - start)
    step = statistics.median(step_s[1:] or step_s)

    result = {"model": spec.label, "weights": sum(w.numel() for w in weights), "step_s": step,
              "blocks": {}}
    for block in blocks:
        fishers = [BlockFisher(w, block) for w in weights]
        start = time.perf_counter()
        for grad in gradients:
            add_gradients(fishers, grad, masks)
        add = (time.perf_counter() - start) / len(gradients)
        copies = [w.detach().clone() for w in weights]
        start = time.perf_counter()
        kept = obs_prune_(copies, fishers, masks, sparsity_to, global_sparsity=True, damp=1e-7,
                          eps=1.1920928955078125e-07)
        update = time.perf_counter() - start
        reached = 1 - sum(int(m.sum()) for m in kept) / result["weights"]
        result["blocks"][block] = {"add_s": add, "update_s": update, "sparsity": reached}
        del fishers
    return result


def table(results: list[dict], grads: int, sparsity_from: float, sparsity_to: float) -> str:
    lines = [f"CPU: {cpu_name()}; torch threads: {torch.get_num_threads()}; {grads} gradients; "
             f"global OBS update from {sparsity_from:.2f} to {sparsity_to:.2f}", "",
             "| model | pruned weights | training step | Fisher block | one Fisher add "
             "(steps) | one OBS update (steps) |", "|---|---|---|---|---|---|"]
    for r in results:
        for block, b in r["blocks"].items():
            lines.append(
                f"| {r['model']} | {r['weights'] / 1e6:.2f}M | {1000 * r['step_s']:.0f} ms | "
                f"{block} | {1000 * b['add_s']:.0f} ms ({b['add_s'] / r['step_s']:.2f}) | "
                f"{b['update_s']:.1f} s ({b['update_s'] / r['step_s']:.0f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,bert-minilm6")
    parser.add_argument("--blocks", default="32,16")
    parser.add_argument("--grads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--from", dest="sparsity_from", type=float, default=0.5)
    parser.add_argument("--to", dest="sparsity_to", type=float, default=0.6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = [int(b) for b in args.blocks.split(",")]
    results = [measure(model_spec(name), blocks, args.grads, args.steps, args.sparsity_from,
                       args.sparsity_to) for name in args.models.split(",")]
    text = table(results, args.grads, args.sparsity_from, args.sparsity_to)
    print(text)
    if args.results:
        with open(args.results, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
