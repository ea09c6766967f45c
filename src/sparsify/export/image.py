"""Export of an image classifier: INT8 (or FP32) ONNX checked by top-1 on the validation set,
and its deployment folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsify.trainers.base import ExportResult

logger = logging.getLogger(__name__)


def export_classifier(model: nn.Module, baseline: nn.Module, val_images: torch.Tensor,
                      val_labels: torch.Tensor, deploy_dir: Path, baseline_path: Path,
                      quantized: bool, config: dict[str, Any]) -> ExportResult:
    """Export, check and describe an image classifier (and its dense FP32 baseline).

    The fidelity rule compares top-1 accuracy on the validation images (ONNX Runtime vs
    PyTorch); the arg-max agreement and the logit differences are reported beside it.

    Raises:
        ExportError: the ONNX checker, an FP32 export that does not match PyTorch, or integer
            kernels missing from a quantized graph.
        FidelityError: top-1 of the ONNX model more than the tolerance from PyTorch's (the
            deployment folder is written all the same).
    """
    from sparsify.export.deployment import fidelity, write_deployment
    from sparsify.export.onnx_export import export_onnx
    from sparsify.export.inspect import compare_with_torch

    deploy_dir.mkdir(parents=True, exist_ok=True)
    size = config.get("crop", val_images.shape[-1])
    sample = val_images[:1]
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    model_path = export_onnx(model.eval(), (sample,), deploy_dir / "model.onnx",
                             input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    export_onnx(baseline.eval(), (sample,), baseline_path, input_names=["input"],
                output_names=["logits"], dynamic_axes=axes)

    comparison = compare_with_torch(model, model_path, {"input": val_images.numpy()},
                                    keep_outputs=True)
    ref, got = comparison.pop("outputs")
    labels = val_labels.numpy()
    torch_right, onnx_right = ref[0].argmax(-1) == labels, got[0].argmax(-1) == labels
    result = fidelity("top1", float(torch_right.mean()), float(onnx_right.mean()), len(labels),
                      comparison, right=(torch_right, onnx_right))

    full_config = {**config, "input_name": "input", "output_name": "logits",
                   "input_shape": ["batch", 3, size, size], "quantized": quantized}
    sample_in = val_images[: min(4, len(val_images))].numpy()
    return write_deployment(deploy_dir, model_path, baseline_path, quantized=quantized,
                            fidelity_result=result, sample_inputs={"input": sample_in},
                            output_names=["logits"], config=full_config,
                            readme=classifier_readme(full_config))


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

