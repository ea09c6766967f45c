"""Export of Ultralytics YOLO models: raw NMS-free ONNX outputs, checks, deployment folder.

The graph ends where Ultralytics' own ONNX export ends: ``output0`` is ``(batch, 4 + classes,
anchors)`` with boxes as pixel ``x_center, y_center, width, height`` in the letterboxed input and
class scores after the sigmoid; segmentation models add the mask coefficients to ``output0`` and
the prototypes as ``output1`` ``(batch, 32, H/4, W/4)``. Non-maximum suppression is left to the
application (the README shows it in a few lines of numpy).
"""

from __future__ import annotations

import copy
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

#: Agreement with PyTorch on the validation images, as fractions of each output's range.
#: INT8: PyTorch's fake quantization and ONNX Runtime round float32 sums differently, so a value
#: at a rounding tie lands one quantization step away and the step travels through the later
#: layers; the *max* is dominated by such ties, the *mean* shows any systematic drift.
INT8_MAX_TOLERANCE = 0.15
INT8_MEAN_TOLERANCE = 0.01
FP32_MAX_TOLERANCE = 1e-3
FP32_MEAN_TOLERANCE = 1e-5
#: Of the anchors PyTorch scores above this, the fraction where ONNX gives the same class.
CONFIDENT_SCORE = 0.25
MIN_CLASS_AGREEMENT = 0.95
PAD_VALUE = 114


def letterbox(image: Any, size: int) -> np.ndarray:
    """An image (path or PIL image) as the network input: RGB, resized to fit ``size`` keeping
    its aspect ratio, centred on grey (114) padding, ``(3, size, size)`` float32 in [0, 1]."""
    from PIL import Image

    img = Image.open(image) if not isinstance(image, Image.Image) else image
    img = img.convert("RGB")
    scale = min(size / img.width, size / img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    canvas.paste(img.resize((w, h), Image.BILINEAR), ((size - w) // 2, (size - h) // 2))
    return (np.asarray(canvas, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


def prepare_for_export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose head returns the raw decoded tensor(s) only."""
    from ultralytics.nn.modules import Detect

    model = copy.deepcopy(model).float().cpu().eval()
    for module in model.modules():
        if isinstance(module, Detect):
            module.export = True
            module.format = "onnx"
            module.dynamic = False
        if hasattr(module, "forward_split") and type(module).__name__ in ("C2f", "C3k2"):
            module.forward = module.forward_split  # split instead of chunk, as Ultralytics does
    return model


def _fuse_fp32(model: nn.Module) -> nn.Module:
    """Ultralytics' conv+bn fusion on a float model (what its own export runs)."""
    from sparsify.quantization import is_qat_prepared

    if not is_qat_prepared(model) and hasattr(model, "fuse"):
        model = model.fuse(verbose=False)
    return model


def _class_agreement(ref: np.ndarray, got: np.ndarray, num_classes: int) -> tuple[float | None, int]:
    """Among anchors PyTorch scores above :data:`CONFIDENT_SCORE`, the fraction with the same
    best class in ONNX; ``None`` when PyTorch is confident nowhere."""
    ref_scores, got_scores = ref[:, 4:4 + num_classes], got[:, 4:4 + num_classes]
    confident = ref_scores.max(axis=1) >= CONFIDENT_SCORE
    n = int(confident.sum())
    if n == 0:
        return None, 0
    same = ref_scores.argmax(axis=1) == got_scores.argmax(axis=1)
    return float(same[confident].mean()), n


def export_yolo(model: nn.Module, baseline: nn.Module, val_images: torch.Tensor,
                deploy_dir: Path, baseline_path: Path, quantized: bool,
                config: dict[str, Any]) -> dict[str, Any]:
    """Export, check and describe a YOLO model (and its dense FP32 baseline).

    Raises:
        ExportError: the export fails its checks (ONNX checker, agreement with PyTorch, integer
            kernels missing from a quantized graph, Q/DQ nodes in an FP32 graph).
    """
    from sparsify.export.onnx_export import (
        compare_with_torch, count_qdq, export_onnx, integer_kernel_count,
        optimized_graph_op_counts, onnx_weight_sparsity, run_onnx,
    )

    deploy_dir.mkdir(parents=True, exist_ok=True)
    segment = config.get("ultralytics_task") == "segment"
    outputs = ["output0", "output1"] if segment else ["output0"]
    axes = {name: {0: "batch"} for name in ["images", *outputs]}
    sample = val_images[:1]

    export_model = prepare_for_export(_fuse_fp32(copy.deepcopy(model)))
    model_path = export_onnx(export_model, (sample,), deploy_dir / "model.onnx",
                             input_names=["images"], output_names=outputs, dynamic_axes=axes)
    export_onnx(prepare_for_export(_fuse_fp32(copy.deepcopy(baseline))), (sample,),
                baseline_path, input_names=["images"], output_names=outputs, dynamic_axes=axes)

    inputs = {"images": val_images.numpy()}
    comparison = compare_with_torch(export_model, model_path, inputs)
    comparison.pop("top1_agreement", None)  # arg-max over anchors means nothing here
    with torch.no_grad():
        ref = export_model(val_images)
    ref0 = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
    got0 = run_onnx(model_path, inputs)[0]
    agreement, confident = _class_agreement(ref0, got0, int(config["num_classes"]))
    comparison["class_agreement"] = agreement
    comparison["confident_anchors"] = confident
    max_tol, mean_tol = ((INT8_MAX_TOLERANCE, INT8_MEAN_TOLERANCE) if quantized
                         else (FP32_MAX_TOLERANCE, FP32_MEAN_TOLERANCE))
    if (comparison["max_rel_diff"] > max_tol or comparison["mean_rel_diff"] > mean_tol
            or (agreement is not None and agreement < MIN_CLASS_AGREEMENT)):
        raise ExportError(
            f"The ONNX model disagrees with PyTorch on the validation images: difference max "
            f"{comparison['max_rel_diff']:.4f} / mean {comparison['mean_rel_diff']:.5f} of the "
            f"output range (need <= {max_tol} / {mean_tol}), class agreement on confident "
            f"anchors {agreement} (need >= {MIN_CLASS_AGREEMENT}).")
    counts = optimized_graph_op_counts(model_path)
    kernels = integer_kernel_count(counts)
    n_q, n_dq = count_qdq(model_path)
    if quantized and kernels == 0:
        raise ExportError("The quantized export has no integer kernels in ONNX Runtime's "
                          f"optimised graph (ops: {dict(counts)}): it would be slower than FP32.")
    if not quantized and (n_q or n_dq):
        raise ExportError("An FP32 export holds QuantizeLinear/DequantizeLinear nodes.")

    sample_in = val_images[: min(4, len(val_images))].numpy()
    sample_out = run_onnx(model_path, {"images": sample_in})
    np.savez(deploy_dir / "sample_input.npz", images=sample_in)
    np.savez(deploy_dir / "sample_output.npz", **dict(zip(outputs, sample_out)))
    size = int(config["image_size"])
    full_config = {
        **config, "input_name": "images", "output_names": outputs,
        "input_shape": ["batch", 3, size, size], "quantized": quantized,
        "preprocessing": {"letterbox": True, "pad_value": PAD_VALUE, "scale": "1/255",
                          "channels": "RGB", "layout": "NCHW"},
        "output0": "(batch, 4 + num_classes" + (" + 32 mask coefficients" if segment else "")
                   + ", anchors): box x_center, y_center, width, height in input pixels, "
                   "class scores after sigmoid; no NMS applied",
    }
    if segment:
        full_config["output1"] = "(batch, 32, H/4, W/4): mask prototypes"
    write_text_atomic(deploy_dir / "config.json", json.dumps(full_config, indent=2) + "\n")
    write_text_atomic(deploy_dir / "README.md", yolo_readme(full_config))
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


def yolo_readme(config: dict[str, Any]) -> str:
    size = config["input_shape"][2]
    segment = config.get("ultralytics_task") == "segment"
    mask_note = (
        "\nFor masks: `coeffs = out[keep, 4 + len(names):]`, `protos = outputs[1][0]`; the mask "
        "of a detection is `sigmoid(coeffs @ protos.reshape(32, -1))` reshaped to the prototype "
        "size and cropped to its box (scaled by 1/4).\n" if segment else "")
    return f"""# Deployment: {config['architecture']} ({config['task']})

`model.onnx` takes `{size}x{size}` RGB images, letterboxed (resized keeping the aspect ratio,
centred on grey {PAD_VALUE} padding) and scaled to [0, 1], as `images` of shape
`(batch, 3, {size}, {size})` ({'INT8-quantized' if config['quantized'] else 'FP32'}). It returns
the raw predictions without non-maximum suppression, like Ultralytics' own ONNX export:
`output0` is `(batch, 4 + {config['num_classes']}{' + 32' if segment else ''}, anchors)`: box
centre x, centre y, width, height in input pixels, then one score per class (after the
sigmoid). `config.json` holds the class names in index order.

```python
import json, numpy as np, onnxruntime as ort
from PIL import Image

cfg = json.load(open("config.json"))
size, names = cfg["image_size"], cfg["class_names"]
img = Image.open("image.jpg").convert("RGB")
scale = min(size / img.width, size / img.height)
w, h = round(img.width * scale), round(img.height * scale)
canvas = Image.new("RGB", (size, size), (114, 114, 114))
left, top = (size - w) // 2, (size - h) // 2
canvas.paste(img.resize((w, h), Image.BILINEAR), (left, top))
x = (np.asarray(canvas, np.float32) / 255).transpose(2, 0, 1)[None]
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
outputs = session.run(None, {{"images": x}})
out = outputs[0][0].T                                # (anchors, 4 + classes ...)
scores = out[:, 4:4 + len(names)]
cls, conf = scores.argmax(1), scores.max(1)
boxes = np.concatenate([out[:, :2] - out[:, 2:4] / 2, out[:, :2] + out[:, 2:4] / 2], 1)

def iou(a, b):                                        # one box against many, xyxy
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    area = lambda r: np.prod(r[..., 2:] - r[..., :2], -1)
    return inter / (area(a) + area(b) - inter + 1e-9)

keep = []
for i in np.argsort(-conf):                           # non-maximum suppression per class
    if conf[i] < 0.25:
        break
    if all(cls[j] != cls[i] or iou(boxes[i], boxes[j:j + 1])[0] < 0.45 for j in keep):
        keep.append(i)
for i in keep:                                        # back to original image pixels
    x0, y0, x1, y1 = (boxes[i] - [left, top, left, top]) / scale
    print(names[cls[i]], round(float(conf[i]), 3), [round(float(v), 1) for v in (x0, y0, x1, y1)])
```
{mask_note}
`sample_input.npz` / `sample_output.npz` hold a few letterboxed validation images and the
outputs this model gives for them, to check an installation.
"""
