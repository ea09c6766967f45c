"""Export of a transformers model: INT8 (or FP32) ONNX with dynamic batch and sequence axes,
checked with the task metric on the validation set, and its deployment folder.

The model's outputs over the validation set come from the task's own loop
(``NLPTask.predict_with``) given a batch runner, so this module never imports the trainer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from sparsify.trainers.base import ExportResult, Fidelity

logger = logging.getLogger(__name__)


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


def onnx_batch_runner(onnx_path: Path) -> Callable[[dict[str, Any]], list[np.ndarray]]:
    """``batch -> outputs`` of an ONNX file, for :meth:`NLPTask.predict_with`."""
    from sparsify.export.inspect import ort_session

    session = ort_session(onnx_path)
    names = [o.name for o in session.get_outputs()]

    def run(batch: dict[str, Any]) -> list[np.ndarray]:
        feed = {k: v.numpy().astype(np.int64) for k, v in batch.items()}
        return list(session.run(names, feed))

    return run


def export_transformer(task: Any, deploy_dir: Path, baseline_path: Path) -> ExportResult:
    """Export ``task.model`` (INT8 when QAT ran) and the dense FP32 ``task.baseline``; check the
    export with the task metric on the whole validation set; write the deployment folder. An
    INT8 model slower than the dense FP32 baseline is replaced by the trained weights in FP32
    (:func:`~sparsify.export.fallback.ship_not_slower`), judged by the same rule.

    ``task`` is an :class:`~sparsify.trainers.nlp.NLPTask` (its ``output_names``,
    ``export_metric``, ``predict_with`` and ``metrics_from_outputs`` are used).

    Raises:
        ExportError: the ONNX checker, an FP32 export that does not match PyTorch, or the
            integer-kernel check failed.
        FidelityError: the task metric of the ONNX model is more than the tolerance from
            PyTorch's (the deployment folder is written all the same).
    """
    import contextlib

    from sparsify.export.deployment import FP32_MAX_TOLERANCE, fidelity, write_deployment
    from sparsify.export.fallback import FP32_SPARSE, ship_not_slower
    from sparsify.export.inspect import compare_with_torch
    from sparsify.export.onnx_export import export_onnx
    from sparsify.quantization.fake_quant import fake_quant_bypassed

    family = task.family
    output_names = task.output_names
    metric = task.export_metric
    inputs = task.input_names
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    for name in output_names:
        axes[name] = {0: "batch"} if family == "text_classification" else {0: "batch",
                                                                            1: "sequence"}
    onnx_args = {"input_names": inputs, "output_names": output_names, "dynamic_axes": axes}
    deploy_dir.mkdir(parents=True, exist_ok=True)
    sample = {k: _tensor(v) for k, v in task.sample_inputs(2).items()}
    model = OutputTuple(task.model.eval(), output_names)
    model_path = export_onnx(model, sample, deploy_dir / "model.onnx", **onnx_args)
    export_onnx(OutputTuple(task.baseline.eval(), output_names), sample, baseline_path,
                **onnx_args)
    torch_out: list[Any] = []  # the trained model's validation outputs, computed once

    def judge(path: Path, fmt: str) -> Fidelity:
        # the FP32 fallback's outputs are compared with the QAT model in float (a conversion
        # check); its task metric with the trained model's (the run's reported metric)
        float_form = fake_quant_bypassed() if fmt == FP32_SPARSE else contextlib.nullcontext()
        with float_form:
            comparison = compare_with_torch(model, path, task.sample_inputs(4))
        if not torch_out:
            torch_out.append(task.predict(task.model))
        onnx_out = task.predict_with(onnx_batch_runner(path))
        torch_metrics, onnx_metrics = (task.metrics_from_outputs(o)
                                       for o in (torch_out[0], onnx_out))
        right = None
        if metric == "accuracy":  # a count of right answers: the paired test applies
            labels = np.asarray([e["label"] for e in task.data.val])
            right = (torch_out[0][0].argmax(-1) == labels, onnx_out[0].argmax(-1) == labels)
        # SQuAD's exact match / F1 are already in points; the others are fractions
        return fidelity(metric, torch_metrics[metric], onnx_metrics[metric],
                        len(task.data.val), comparison,
                        fraction=family != "question_answering", right=right)

    def export_fp32(path: Path) -> Path:
        with fake_quant_bypassed():
            return export_onnx(model, sample, path, **onnx_args)

    shipped = ship_not_slower(model_path, baseline_path, quantized=bool(task.qat),
                              make_inputs=task.latency_inputs, judge=judge,
                              export_fp32=export_fp32, fp32_tolerance=FP32_MAX_TOLERANCE,
                              lengths=task.latency_lengths())
    quantized = shipped.quantized

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
    task.tokenizer.save_pretrained(deploy_dir)
    return write_deployment(deploy_dir, shipped.path, baseline_path, quantized=quantized,
                            fidelity_result=shipped.fidelity, sample_inputs=task.sample_inputs(2),
                            output_names=output_names, config=config,
                            readme=transformer_readme(config), shipping=shipped)


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
