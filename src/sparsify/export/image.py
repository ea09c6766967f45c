"""Export of an image classifier: INT8 (or FP32) ONNX checked by top-1 on the validation set,
and its deployment folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify.trainers.base import ExportResult, Fidelity

logger = logging.getLogger(__name__)


def export_classifier(model: nn.Module, baseline: nn.Module, val_images: torch.Tensor,
                      val_labels: torch.Tensor, deploy_dir: Path, baseline_path: Path,
                      quantized: bool, config: dict[str, Any]) -> ExportResult:
    """Export, check and describe an image classifier (and its dense FP32 baseline).

    The fidelity rule compares top-1 accuracy on the validation images (ONNX Runtime vs
    PyTorch); the arg-max agreement and the logit differences are reported beside it. An INT8
    model slower than the dense FP32 baseline is replaced by the trained weights in FP32
    (:func:`~sparsify.export.fallback.ship_not_slower`), judged by the same rule.

    Raises:
        ExportError: the ONNX checker, an FP32 export that does not match PyTorch, or integer
            kernels missing from a quantized graph.
        FidelityError: top-1 of the ONNX model more than the tolerance from PyTorch's (the
            deployment folder is written all the same).
    """
    import contextlib

    from sparsify.export.deployment import FP32_MAX_TOLERANCE, fidelity, write_deployment
    from sparsify.export.fallback import FP32_SPARSE, ship_not_slower
    from sparsify.export.inspect import compare_with_torch
    from sparsify.export.onnx_export import export_onnx
    from sparsify.quantization.fake_quant import fake_quant_bypassed

    deploy_dir.mkdir(parents=True, exist_ok=True)
    size = config.get("crop", val_images.shape[-1])
    sample = val_images[:1]
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    onnx_args = {"input_names": ["input"], "output_names": ["logits"], "dynamic_axes": axes}
    model_path = export_onnx(model.eval(), (sample,), deploy_dir / "model.onnx", **onnx_args)
    export_onnx(baseline.eval(), (sample,), baseline_path, **onnx_args)
    labels = val_labels.numpy()

    def judge(path: Path, fmt: str) -> Fidelity:
        # the FP32 fallback's outputs are compared with the QAT model in float (a conversion
        # check); its top-1 with the trained model's (the run's reported metric)
        float_form = fake_quant_bypassed() if fmt == FP32_SPARSE else contextlib.nullcontext()
        with float_form:
            comparison = compare_with_torch(model, path, {"input": val_images.numpy()},
                                            keep_outputs=True)
        ref, got = comparison.pop("outputs")
        if fmt == FP32_SPARSE:
            with torch.no_grad():
                ref = [model.eval()(val_images).numpy()]
        torch_right, onnx_right = ref[0].argmax(-1) == labels, got[0].argmax(-1) == labels
        return fidelity("top1", float(torch_right.mean()), float(onnx_right.mean()),
                        len(labels), comparison, right=(torch_right, onnx_right))

    def export_fp32(path: Path) -> Path:
        with fake_quant_bypassed():
            return export_onnx(model.eval(), (sample,), path, **onnx_args)

    one = val_images[:1].numpy()
    shipped = ship_not_slower(model_path, baseline_path, quantized=quantized,
                              make_inputs=lambda batch: {"input": np.repeat(one, batch, 0)},
                              judge=judge, export_fp32=export_fp32,
                              fp32_tolerance=FP32_MAX_TOLERANCE)

    full_config = {**config, "input_name": "input", "output_name": "logits",
                   "input_shape": ["batch", 3, size, size], "quantized": shipped.quantized}
    sample_in = val_images[: min(4, len(val_images))].numpy()
    return write_deployment(deploy_dir, shipped.path, baseline_path, quantized=shipped.quantized,
                            fidelity_result=shipped.fidelity, sample_inputs={"input": sample_in},
                            output_names=["logits"], config=full_config,
                            readme=classifier_readme(full_config), shipping=shipped)


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

