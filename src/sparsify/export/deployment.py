"""The deployment folder: ONNX model, config, README, samples; checked against PyTorch."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify.errors import ExportError
from sparsify.rundir import write_text_atomic

logger = logging.getLogger(__name__)

#: Agreement of the ONNX model with PyTorch on the validation images, as fractions of the logit
#: range. INT8: ONNX Runtime and PyTorch's fake quantization round float32 sums differently, so a
#: value at a rounding tie lands one quantization step away and the step travels through later
#: layers: the *max* difference is dominated by such ties (measured 0.02-0.05 on barely trained
#: ResNet-18s, 0.004 after 10 epochs on the digits benchmark), the *mean* shows any systematic
#: drift (the AVX2 saturation of INT8_EXPORT.md pitfall 2 was 2-5%).
INT8_MAX_TOLERANCE = 0.10
INT8_MEAN_TOLERANCE = 0.01
FP32_MAX_TOLERANCE = 1e-4
FP32_MEAN_TOLERANCE = 1e-5
MIN_TOP1_AGREEMENT = 0.99


def gzip_size(path: Path) -> int:
    with open(path, "rb") as fh:
        return len(gzip.compress(fh.read(), compresslevel=6))


def export_classifier(model: nn.Module, baseline: nn.Module, val_images: torch.Tensor,
                      deploy_dir: Path, baseline_path: Path, quantized: bool,
                      config: dict[str, Any]) -> dict[str, Any]:
    """Export, check and describe an image classifier (and its dense FP32 baseline).

    Raises:
        ExportError: the export fails its checks (checker, ONNX Runtime, agreement with PyTorch,
            integer kernels missing from a quantized graph).
    """
    from sparsify.export.onnx_export import (
        compare_with_torch, count_qdq, export_onnx, integer_kernel_count,
        optimized_graph_op_counts, onnx_weight_sparsity,
    )

    deploy_dir.mkdir(parents=True, exist_ok=True)
    size = config.get("crop", val_images.shape[-1])
    sample = val_images[:1]
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    model_path = export_onnx(model.eval(), (sample,), deploy_dir / "model.onnx",
                             input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    export_onnx(baseline.eval(), (sample,), baseline_path, input_names=["input"],
                output_names=["logits"], dynamic_axes=axes)

    comparison = compare_with_torch(model, model_path, {"input": val_images.numpy()})
    max_tol, mean_tol = ((INT8_MAX_TOLERANCE, INT8_MEAN_TOLERANCE) if quantized
                         else (FP32_MAX_TOLERANCE, FP32_MEAN_TOLERANCE))
    if (comparison["top1_agreement"] < MIN_TOP1_AGREEMENT
            or comparison["max_rel_diff"] > max_tol or comparison["mean_rel_diff"] > mean_tol):
        raise ExportError(
            f"The ONNX model disagrees with PyTorch on the validation images: top-1 agreement "
            f"{comparison['top1_agreement']:.3f} (need >= {MIN_TOP1_AGREEMENT}), logit "
            f"difference max {comparison['max_rel_diff']:.4f} / mean "
            f"{comparison['mean_rel_diff']:.5f} of the logit range (need <= {max_tol} / "
            f"{mean_tol}).")
    counts = optimized_graph_op_counts(model_path)
    kernels = integer_kernel_count(counts)
    n_q, n_dq = count_qdq(model_path)
    if quantized and kernels == 0:
        raise ExportError("The quantized export has no integer kernels in ONNX Runtime's "
                          f"optimised graph (ops: {dict(counts)}): it would be slower than FP32.")
    if not quantized and (n_q or n_dq):
        raise ExportError("An FP32 export holds QuantizeLinear/DequantizeLinear nodes.")

    with torch.no_grad():
        sample_in = val_images[: min(4, len(val_images))]
        from sparsify.export.onnx_export import run_onnx

        sample_out = run_onnx(model_path, {"input": sample_in.numpy()})[0]
    np.savez(deploy_dir / "sample_input.npz", input=sample_in.numpy())
    np.savez(deploy_dir / "sample_output.npz", logits=sample_out)
    full_config = {**config, "input_name": "input", "output_name": "logits",
                   "input_shape": ["batch", 3, size, size], "quantized": quantized}
    write_text_atomic(deploy_dir / "config.json", json.dumps(full_config, indent=2) + "\n")
    write_text_atomic(deploy_dir / "README.md", classifier_readme(full_config))
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


def classifier_readme(config: dict[str, Any]) -> str:
    names = config["class_names"]
    return f"""# Deployment: {config['architecture']} image classifier

`model.onnx` classifies {config['input_shape'][2]}x{config['input_shape'][3]} RGB images into
{len(names)} classes ({'INT8-quantized' if config['quantized'] else 'FP32'}). `config.json` holds
the preprocessing and the class names in index order.

```python
import json, numpy as np, onnxruntime as ort
from PIL import Image

cfg = json.load(open("config.json"))
img = Image.open("image.jpg").convert("RGB")          # any RGB image
scale = cfg["resize"] / min(img.size)                  # shorter side -> resize, then center crop
img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
left, top = (img.width - cfg["crop"]) // 2, (img.height - cfg["crop"]) // 2
img = img.crop((left, top, left + cfg["crop"], top + cfg["crop"]))
x = (np.asarray(img, np.float32) / 255 - cfg["mean"]) / cfg["std"]
x = x.transpose(2, 0, 1)[None].astype(np.float32)
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits = session.run(None, {{"input": x}})[0]
print(cfg["class_names"][int(logits.argmax())])
```

`sample_input.npz` / `sample_output.npz` hold a few preprocessed validation images and the
logits this model gives for them, to check an installation.
"""

