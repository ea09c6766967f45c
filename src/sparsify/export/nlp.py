"""Export of a transformers model: INT8 (or FP32) ONNX with dynamic batch and sequence axes,
checked with the task metric on the validation set, and its deployment folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from sparsify.errors import ExportError
from sparsify.export.deployment import FP32_MAX_TOLERANCE
from sparsify.rundir import write_text_atomic

logger = logging.getLogger(__name__)

#: how far the exported model's task metric may lie from PyTorch's, in points (0-100 scale)
METRIC_TOLERANCE_POINTS = 0.5


class OutputTuple(nn.Module):
    """A transformers model whose outputs are a tuple of the named tensors (for tracing)."""

    def __init__(self, model: nn.Module, output_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.output_names = model, output_names

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs)
        return tuple(out[name] for name in self.output_names)


def onnx_outputs(task: Any, onnx_path: Path, batch_size: int = 32) -> list[Any]:
    """Per-feature outputs of an ONNX file over the task's validation features."""
    from sparsify.export.onnx_export import ort_session
    from sparsify.trainers.nlp import collect_outputs, stack_outputs

    session = ort_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    rows: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(task.val_features), batch_size):
        chunk = task.val_features[start:start + batch_size]
        batch = task.collate([{k: f[k] for k in task.input_names} for f in chunk])
        feed = {k: v.numpy().astype(np.int64) for k, v in batch.items()}
        for j, values in enumerate(session.run(names, feed)):
            collect_outputs(rows[j], values, chunk, task.family)
    return [stack_outputs(r, task.family) for r in rows]


def _points(name: str, value: float, family: str) -> float:
    return value if family == "question_answering" else 100 * value


def export_transformer(task: Any, deploy_dir: Path, baseline_path: Path) -> dict[str, Any]:
    """Export ``task.model`` (INT8 when QAT ran) and the dense FP32 ``task.baseline``; check the
    export on the validation set; write the deployment folder.

    Raises:
        ExportError: the ONNX checker, ONNX Runtime, the metric check (more than
            ``METRIC_TOLERANCE_POINTS`` from PyTorch) or the integer-kernel check failed.
    """
    from sparsify.export.onnx_export import (
        compare_with_torch, count_qdq, export_onnx, integer_kernel_count,
        optimized_graph_op_counts, onnx_weight_sparsity, run_onnx,
    )
    from sparsify.trainers.nlp import TASKS

    family = task.family
    output_names = TASKS[family][1]
    metric = TASKS[family][2]
    inputs = task.input_names
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    for name in output_names:
        axes[name] = {0: "batch"} if family == "text_classification" else {0: "batch",
                                                                            1: "sequence"}
    deploy_dir.mkdir(parents=True, exist_ok=True)
    sample = task.sample_inputs(2)
    model = OutputTuple(task.model.eval(), output_names)
    model_path = export_onnx(model, {k: _tensor(v) for k, v in sample.items()},
                             deploy_dir / "model.onnx", input_names=inputs,
                             output_names=output_names, dynamic_axes=axes)
    export_onnx(OutputTuple(task.baseline.eval(), output_names),
                {k: _tensor(v) for k, v in sample.items()}, baseline_path, input_names=inputs,
                output_names=output_names, dynamic_axes=axes)

    quantized = bool(task.qat)
    comparison = compare_with_torch(model, model_path, task.sample_inputs(4))
    if not quantized and comparison["max_rel_diff"] > FP32_MAX_TOLERANCE:
        raise ExportError(f"The FP32 ONNX model differs from PyTorch by "
                          f"{comparison['max_rel_diff']:.2e} of the output range (need <= "
                          f"{FP32_MAX_TOLERANCE}).")
    torch_metrics = task.evaluate(task.model)
    onnx_metrics = task.metrics_from_outputs(onnx_outputs(task, model_path))
    gap = abs(_points(metric, torch_metrics[metric], family)
              - _points(metric, onnx_metrics[metric], family))
    comparison.update(metric=metric, pytorch=round(torch_metrics[metric], 5),
                      onnxruntime=round(onnx_metrics[metric], 5), gap_points=round(gap, 4))
    if gap > METRIC_TOLERANCE_POINTS:
        raise ExportError(
            f"The ONNX model's {metric} on the validation set is {onnx_metrics[metric]:.4f}, "
            f"PyTorch's {torch_metrics[metric]:.4f}: {gap:.2f} points apart (allowed "
            f"{METRIC_TOLERANCE_POINTS}) over {len(task.data.val)} validation examples.",
            hint="Run with --debug; the QAT scheme may not match what ONNX Runtime computes.")
    counts = optimized_graph_op_counts(model_path)
    kernels = integer_kernel_count(counts)
    n_q, n_dq = count_qdq(model_path)
    if quantized and kernels == 0:
        raise ExportError("The quantized export has no integer kernels in ONNX Runtime's "
                          f"optimised graph (ops: {dict(counts)}): it would be slower than FP32.")
    if not quantized and (n_q or n_dq):
        raise ExportError("An FP32 export holds QuantizeLinear/DequantizeLinear nodes.")

    sample_in = task.sample_inputs(2)
    sample_out = run_onnx(model_path, sample_in)
    np.savez(deploy_dir / "sample_input.npz", **sample_in)
    np.savez(deploy_dir / "sample_output.npz", **dict(zip(output_names, sample_out)))
    task.tokenizer.save_pretrained(deploy_dir)
    config = {
        "task": family,
        "use_case": task.plan.use_case.id,
        "architecture": type(task.model).__name__,
        "source": task.source,
        "input_names": list(inputs),
        "output_names": list(output_names),
        "max_seq_length": task.max_len,
        "quantized": quantized,
    }
    if task.label_names is not None:
        config["id2label"] = {str(i): n for i, n in enumerate(task.label_names)}
        config["label2id"] = {n: i for i, n in enumerate(task.label_names)}
    if family == "question_answering":
        config["doc_stride"] = task.stride
    write_text_atomic(deploy_dir / "config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomic(deploy_dir / "README.md", transformer_readme(config))
    return {
        "onnx": str(model_path),
        "baseline_onnx": str(baseline_path),
        "agreement": comparison,
        "optimized_graph_ops": dict(counts),
        "integer_kernels": kernels,
        "quantize_nodes": n_q,
        "dequantize_nodes": n_dq,
        "onnx_sparsity": onnx_weight_sparsity(model_path)["overall"],
    }


def _tensor(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(array)


_EXAMPLES = {
    "text_classification": ('text = "I really enjoyed this, it was great."',
                            'enc = tok([text], truncation=True, max_length=cfg["max_seq_length"], '
                            'return_tensors="np")',
                            'print(cfg["id2label"][str(int(outputs[0].argmax(-1)[0]))])'),
    "token_classification": ('words = ["John", "lives", "in", "Berlin"]',
                             'enc = tok([words], is_split_into_words=True, truncation=True, '
                             'max_length=cfg["max_seq_length"], return_tensors="np")',
                             'tags = outputs[0].argmax(-1)[0]\n'
                             'word_ids = enc.word_ids(0)\n'
                             'print([(words[w], cfg["id2label"][str(int(tags[i]))])\n'
                             '       for i, w in enumerate(word_ids)\n'
                             '       if w is not None and (i == 0 or word_ids[i - 1] != w)])'),
    "question_answering": ('question, context = "Where does John live?", '
                           '"John lives in Berlin."',
                           'enc = tok([question], [context], truncation="only_second", '
                           'max_length=cfg["max_seq_length"], return_offsets_mapping=True, '
                           'return_tensors="np")',
                           'offsets, seq = enc.pop("offset_mapping")[0], enc.sequence_ids(0)\n'
                           'start, end = outputs[0][0].copy(), outputs[1][0].copy()\n'
                           'start[[s != 1 for s in seq]] = end[[s != 1 for s in seq]] = -1e9\n'
                           'i = int(start.argmax()); j = i + int(end[i:i + 30].argmax())\n'
                           'print(context[offsets[i][0]:offsets[j][1]])'),
}


def transformer_readme(config: dict[str, Any]) -> str:
    """The deployment README with an example that runs in the folder."""
    family = config["task"]
    setup, encode, show = _EXAMPLES[family]
    labels = (f"Labels (index order): {', '.join(config['id2label'].values())}.\n"
              if "id2label" in config else "")
    return f"""# Deployment: {config['architecture']} ({config['use_case']})

`model.onnx` is the {'INT8-quantized' if config['quantized'] else 'FP32'} model, with dynamic
batch and sequence axes; inputs {', '.join(config['input_names'])} (int64), outputs
{', '.join(config['output_names'])}. The tokenizer files are in this folder; `config.json` holds
the task, the maximum sequence length and the label names.
{labels}
Run it with ONNX Runtime (`pip install onnxruntime transformers`), in this folder:

```python
import json
import onnxruntime as ort
from transformers import AutoTokenizer

cfg = json.load(open("config.json"))
tok = AutoTokenizer.from_pretrained(".")
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
{setup}
{encode}
feed = {{name: enc[name].astype("int64") for name in cfg["input_names"]}}
outputs = session.run(None, feed)
{show}
```

`sample_input.npz` / `sample_output.npz` hold tokenized validation inputs and this model's
outputs for them, to check an installation.
"""
