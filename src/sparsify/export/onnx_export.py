"""ONNX export: ``export_onnx`` writes the file atomically and folds constant weight
quantization into int8 / int32 initializers (so an INT8 file is about 4x smaller than the FP32
one). Inspecting an exported file is :mod:`sparsify.export.inspect`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsify.errors import ExportError
from sparsify.export.gather_dequant import gather_before_dequantize
from sparsify.export.inspect import require_onnx

if TYPE_CHECKING:
    import onnx
    import torch

logger = logging.getLogger(__name__)


# Never folded into initializers: DequantizeLinear must stay for ONNX Runtime's QDQ fusion.
_NEVER_FOLD = frozenset(
    {"DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
     "RandomUniformLike", "Multinomial", "Bernoulli"}
)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _fold_quantization_constants(model: onnx.ModelProto) -> int:
    """Evaluate the constant subgraphs that feed QuantizeLinear/DequantizeLinear nodes.

    The exporter writes weight quantization as ``QuantizeLinear(float weight)`` and the int32
    bias as Div/Round/Cast over initializers. Folding them stores int8/int32 initializers
    behind DequantizeLinear, the layout ONNX Runtime's ``quantize_static`` produces: 4x smaller
    files, nothing left to compute at load time. Nothing else in the graph is touched (FP32
    exports have no Q/DQ nodes, so they stay exactly as exported). A folded weight is named
    ``<float weight name>_quantized``.

    Returns:
        The number of nodes folded.
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    constant = set(initializers)
    candidates: dict[str, onnx.NodeProto] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        if node.op_type in _NEVER_FOLD or node.domain not in ("", "ai.onnx"):
            continue
        if all(i in constant for i in node.input if i):
            constant.update(node.output)
            for out in node.output:
                candidates[out] = node

    # Keep only the constant nodes that (transitively) feed a Q/DQ node.
    fold_ids: set[int] = set()
    stack = [i for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
             for i in n.input if i]
    while stack:
        name = stack.pop()
        node = candidates.get(name)
        if node is None or id(node) in fold_ids:
            continue
        fold_ids.add(id(node))
        stack.extend(i for i in node.input if i)
    if not fold_ids:
        return 0
    folded = [n for n in graph.node if id(n) in fold_ids]
    kept = [n for n in graph.node if id(n) not in fold_ids]

    needed_outside = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    frontier = [o for n in folded for o in n.output if o in needed_outside]
    used_inits = {i for n in folded for i in n.input if i in initializers}
    sub = helper.make_graph(
        folded,
        "fold",
        inputs=[],
        outputs=[helper.make_empty_tensor_value_info(name) for name in frontier],
        initializer=[initializers[name] for name in sorted(used_inits)],
    )
    sub_model = helper.make_model(sub, opset_imports=list(model.opset_import))
    values = ReferenceEvaluator(sub_model).run(None, {})

    # Name quantized weights after the float weight they came from.
    renames: dict[str, str] = {}
    for node in folded:
        if node.op_type == "QuantizeLinear" and node.input[0] in initializers:
            new = f"{node.input[0]}_quantized"
            if new not in initializers and new not in producer:
                renames[node.output[0]] = new

    del graph.node[:]
    graph.node.extend(kept)
    for node in graph.node:
        for idx, name in enumerate(node.input):
            if name in renames:
                node.input[idx] = renames[name]
    for out in graph.output:
        if out.name in renames:  # pragma: no cover - a weight is never a graph output
            out.name = renames[out.name]
    for name, value in zip(frontier, values):
        graph.initializer.append(
            numpy_helper.from_array(np.asarray(value), renames.get(name, name))
        )
    still_used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    stale = [init for init in graph.initializer if init.name in used_inits
             and init.name not in still_used]
    for init in stale:
        graph.initializer.remove(init)
    return len(folded)


def export_onnx(
    model: torch.nn.Module,
    sample_inputs: tuple[Any, ...] | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None,
    opset: int = 17,
) -> Path:
    """Export ``model`` to ONNX, atomically, and check the result.

    The model is exported in eval mode (its previous mode is restored afterwards) with the
    TorchScript-based exporter (``dynamo=False``), the one that handles fake quantization
    (INT8_EXPORT.md pitfall 1). Weights are exported as they are: nothing is re-applied here
    (apply pruning masks before calling), and exact zeros stay exact (a zero float weight
    quantizes to the zero point). The file is written under a temporary name in the same
    folder and renamed only after ``onnx.checker`` passed, so ``path`` is never half written.

    Args:
        model: the PyTorch model (FP32 or prepared with :func:`sparsify.quantization.prepare_qat_`).
        sample_inputs: positional inputs as a tuple, or keyword inputs as a dict (e.g. a
            tokenizer's output).
        path: the ``.onnx`` file to write; parent folders are created.
        input_names: graph input names, in the order of ``sample_inputs``.
        output_names: graph output names.
        dynamic_axes: ``{name: {axis: "label"}}`` for dynamic dimensions. Give the batch (and
            sequence) axes: with static shapes ONNX Runtime may fuse MatMul+Add before its
            QDQ fusion and lose the integer kernels (INT8_EXPORT.md pitfall 3).
        opset: ONNX opset (17: QuantizeLinear per-axis, LayerNormalization).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ExportError: tracing, conversion, the folding of quantized weights, or the ONNX
            checker failed; the message carries the cause.
    """
    import torch

    onnx, _ = require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(sample_inputs, Mapping):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = dict(sample_inputs)
    else:
        args = tuple(sample_inputs) if isinstance(sample_inputs, (tuple, list)) else (sample_inputs,)
        kwargs = None

    from sparsify.quantization import fold_qat_batchnorm_, has_unfolded_qat_batchnorm

    if has_unfolded_qat_batchnorm(model):
        # QAT convs still train beside their BatchNorm: export the folded form (a copy, so the
        # caller's model keeps training as it was). Same function, integer-kernel graph.
        import copy

        model = copy.deepcopy(model)
        fold_qat_batchnorm_(model)
    was_training = model.training
    model.eval()
    stage = "tracing and converting the model"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated and about tracing
            # constants; the checks below are what decide whether the export is good.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                str(tmp),
                kwargs=kwargs,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dict(dynamic_axes or {}),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        stage = "folding quantized weights"
        proto = onnx.load(str(tmp))
        n_folded = _fold_quantization_constants(proto)
        stage = "moving embedding lookups before their dequantization"
        gather_before_dequantize(proto)
        stage = "checking the exported graph (onnx.checker)"
        onnx.checker.check_model(proto)
        op_counts = Counter(node.op_type for node in proto.graph.node)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        raise ExportError(
            f"ONNX export of {type(model).__name__} to {path} failed while {stage}: "
            f"{type(exc).__name__}: {exc}",
            hint="Run with --debug for the traceback. The model must run on the sample inputs "
            "in eval mode; quantized models need the TorchScript exporter (opset >= 13).",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    logger.info(
        "Exported %s to %s (%d QuantizeLinear, %d DequantizeLinear, %d constant nodes folded).",
        type(model).__name__, path, op_counts["QuantizeLinear"], op_counts["DequantizeLinear"],
        n_folded,
    )
    return path
