"""Where an INT8 export's predictions differ from PyTorch's, and why.

Given a run folder (finished or failed), this rebuilds the trained model from its checkpoint
and the validation images exactly as ``sparsify.run export`` does, then compares the PyTorch
model with ONNX Runtime on every validation image:

* the predictions that flip, with their PyTorch margin (top-1 minus top-2 logit, as a fraction
  of the logit range) next to the median margin: flips at near-zero margins are rounding ties;
* the same comparison with one kind of operator at a time left in float (a ``Mul`` by 1 + 2^-22 (ONNX Runtime removes a ``Mul`` by exactly 1) is put
  between its input DequantizeLinear and the operator, so ONNX Runtime cannot fuse it into an
  integer kernel): a kind whose integer kernel causes a systematic error shows as a drop in
  flips and in the mean difference when it runs in float;
* ONNX Runtime's AVX2 precision mode (``session.x64quantprecision``) and the QDQ graph run
  entirely in float (``session.disable_quant_qdq``: fake quantization as PyTorch computes it).

    python bench/diagnose_int8.py RUN_DIR [--onnx deployment_rejected/model.onnx]

Image classification runs only. Prints a table; the findings are in docs/INT8_EXPORT.md.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from onnx import helper, numpy_helper


def restored_task(run: Path, scratch: Path):
    from sparsify.pipeline import load_task_builder
    from sparsify.plan import plan_from_dict
    from sparsify.recipe.parser import load_recipe

    recorded = yaml.safe_load((run / "plan.yaml").read_text())
    plan = plan_from_dict(recorded)
    task = load_task_builder(plan)(plan, recorded.get("data_path") or recorded["data"], scratch)
    task.load_model()
    task.restore(load_recipe(str(run / "recipe.yaml")), run / "training_artifacts")
    return task


def op_kind(node: onnx.NodeProto, initializers: dict[str, np.ndarray], first_conv: str) -> str:
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.name == first_conv:
            return "stem conv"
        return "depthwise conv" if group > 1 else "pointwise/other conv"
    return {"Add": "residual add", "Gemm": "classifier (Gemm)", "MatMul": "classifier (Gemm)",
            "GlobalAveragePool": "global average pool"}.get(node.op_type, "")


def unfused(model: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    """A copy where every operator of ``kind`` takes its activation inputs through a Mul by 1."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    one = "diagnose_one"
    graph.initializer.append(numpy_helper.from_array(np.array(1.0 + 2.0 ** -22, np.float32), one))
    new_nodes = []
    for node in graph.node:
        if op_kind(node, inits, convs[0] if convs else "") == kind:
            for i, name in enumerate(node.input):
                src = producer.get(name)
                if src is None or src.op_type != "DequantizeLinear" or src.input[0] in inits:
                    continue  # weights and biases stay as they are
                out = f"{name}_diagnose_{node.name}_{i}"
                new_nodes.append(helper.make_node("Mul", [name, one], [out]))
                node.input[i] = out
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model


def session(model: onnx.ModelProto | Path, config: dict[str, str] | None = None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    span = float(ref.max() - ref.min())
    flips = np.flatnonzero(ref.argmax(1) != got.argmax(1))
    ordered = np.sort(ref, 1)
    margin = (ordered[:, -1] - ordered[:, -2]) / span
    return {"top1": float((got.argmax(1) == labels).mean()), "flips": len(flips),
            "flip_margins": [round(float(m), 4) for m in sorted(margin[flips])],
            "mean_diff": float(np.abs(ref - got).mean() / span),
            "max_diff": float(np.abs(ref - got).max() / span),
            "median_margin": float(np.median(margin)),
            "margin_below_0.04": float((margin < 0.04).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--onnx", type=Path, help="default: deployment/ or deployment_rejected/")
    args = parser.parse_args()
    run = args.run.resolve()
    onnx_path = args.onnx or next(p for p in (run / "deployment" / "model.onnx",
                                              run / "deployment_rejected" / "model.onnx")
                                  if p.is_file())
    with tempfile.TemporaryDirectory() as scratch:
        task = restored_task(run, Path(scratch))
    from torch.utils.data import DataLoader

    batches = list(DataLoader(task.val_ds, batch_size=64))
    x = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches]).numpy()
    with torch.no_grad():
        ref = task.model.eval()(x).numpy()
    feed = {"input": x.numpy()}
    model = onnx.load(str(onnx_path))
    rows = [("PyTorch (fake quantization)", compare(ref, ref, labels)),
            ("ONNX Runtime, integer kernels", compare(ref, session(onnx_path).run(None, feed)[0],
                                                      labels)),
            ("  with session.x64quantprecision", compare(ref, session(
                onnx_path, {"session.x64quantprecision": "1"}).run(None, feed)[0], labels)),
            ("  QDQ graph in float (disable_quant_qdq)", compare(ref, session(
                onnx_path, {"session.disable_quant_qdq": "1"}).run(None, feed)[0], labels))]
    for kind in ("stem conv", "depthwise conv", "pointwise/other conv", "residual add",
                 "global average pool", "classifier (Gemm)"):
        rows.append((f"  {kind} in float", compare(
            ref, session(unfused(model, kind)).run(None, feed)[0], labels)))
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                   cpu.splitlines())}
    print(f"Run: {run}\nONNX: {onnx_path}\nValidation images: {len(labels)}; CPU: "
          f"{fields.get('Model name')} family {fields.get('CPU family')} model "
          f"{fields.get('Model')}; {platform.machine()}; onnxruntime {ort.__version__}\n")
    print("| model | top-1 | flips vs PyTorch | margins of the flips | mean / max diff "
          "(of logit range) |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['top1']:.4f} | {r['flips']} | {r['flip_margins'][:8]} | "
              f"{r['mean_diff']:.5f} / {r['max_diff']:.4f} |")
    base = rows[0][1]
    print(f"\nPyTorch margins: median {base['median_margin']:.4f}; "
          f"{base['margin_below_0.04']:.1%} of the images below 0.04 of the logit range.")


if __name__ == "__main__":
    main()
