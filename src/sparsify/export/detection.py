"""Export of Ultralytics YOLO models: raw NMS-free ONNX outputs, checks, deployment folder.

The graph ends where Ultralytics' own ONNX export ends: ``output0`` is ``(batch, 4 + classes,
anchors)`` with boxes as pixel ``x_center, y_center, width, height`` in the letterboxed input and
class scores after the sigmoid; segmentation models add the mask coefficients to ``output0`` and
the prototypes as ``output1`` ``(batch, 32, H/4, W/4)``. Non-maximum suppression is left to the
application (the README shows it in a few lines of numpy).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsify.trainers.base import ExportResult, Fidelity

logger = logging.getLogger(__name__)

#: Of the anchors PyTorch scores above this, the fraction where ONNX gives the same class
#: (reported beside the fidelity rule, not judged).
CONFIDENT_SCORE = 0.25
#: FP32 exports: Ultralytics' conv-bn fusion reorders float sums, so allow a little more than
#: the shared rule's 1e-4 of the output range.
FP32_MAX_TOLERANCE = 1e-3
PAD_VALUE = 114
#: mAP is computed on batches of this many letterboxed validation images
BATCH = 16


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


def letterbox_boxes(label: Path | None, image: Path, size: int) -> np.ndarray:
    """The ground-truth boxes of one image as ``(k, 5)``: class, x1, y1, x2, y2 in the pixels of
    its letterboxed input (:func:`letterbox`); a polygon (segmentation) gives its bounding box."""
    from PIL import Image

    rows = []
    if label is not None and label.is_file():
        with Image.open(image) as img:
            width, height = img.size
        scale = min(size / width, size / height)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        left, top = (size - w) // 2, (size - h) // 2
        for line in label.read_text(encoding="utf-8").splitlines():
            values = [float(v) for v in line.split()]
            if len(values) < 5:
                continue
            cls, coords = values[0], np.asarray(values[1:])
            if len(coords) == 4:
                xc, yc, bw, bh = coords
                x1, y1, x2, y2 = xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2
            else:
                xs, ys = coords[0::2], coords[1::2]
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
            rows.append([cls, x1 * w + left, y1 * h + top, x2 * w + left, y2 * h + top])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


class BoxMAP:
    """mAP50-95 and mAP50 of raw YOLO outputs, as Ultralytics' validator computes them (its
    NMS, IoU matching at 0.50:0.95 and per-class AP), accumulated batch by batch."""

    def __init__(self, num_classes: int) -> None:
        from ultralytics.engine.validator import BaseValidator

        self.num_classes = num_classes
        self._matcher = BaseValidator.__new__(BaseValidator)  # only its IoU matching is used
        self._matcher.iouv = torch.linspace(0.5, 0.95, 10)
        self._stats: dict[str, list[np.ndarray]] = {"tp": [], "conf": [], "pred_cls": [],
                                                     "target_cls": []}

    def update(self, outputs: np.ndarray, targets: list[np.ndarray]) -> None:
        from ultralytics.utils.metrics import box_iou
        from ultralytics.utils.nms import non_max_suppression

        detections = non_max_suppression(torch.from_numpy(np.ascontiguousarray(outputs)),
                                         conf_thres=0.001, iou_thres=0.7, nc=self.num_classes,
                                         max_det=300)
        for det, target in zip(detections, targets):
            det = det[:, :6]
            true_cls = torch.from_numpy(target[:, 0])
            if len(det) and len(target):
                iou = box_iou(torch.from_numpy(target[:, 1:5]), det[:, :4])
                tp = self._matcher.match_predictions(det[:, 5], true_cls, iou).numpy()
            else:
                tp = np.zeros((len(det), 10), dtype=bool)
            self._stats["tp"].append(tp)
            self._stats["conf"].append(det[:, 4].numpy())
            self._stats["pred_cls"].append(det[:, 5].numpy())
            self._stats["target_cls"].append(target[:, 0])

    def result(self) -> dict[str, float]:
        from ultralytics.utils.metrics import ap_per_class

        stats = {k: np.concatenate(v, 0) if v else np.zeros(0) for k, v in self._stats.items()}
        if not len(stats["target_cls"]) or not len(stats["tp"]):
            return {"map50_95": 0.0, "map50": 0.0}
        ap = ap_per_class(stats["tp"], stats["conf"], stats["pred_cls"],
                          stats["target_cls"])[5]
        return {"map50_95": float(ap.mean()) if ap.size else 0.0,
                "map50": float(ap[:, 0].mean()) if ap.size else 0.0}


def export_yolo(model: nn.Module, baseline: nn.Module, val: list[tuple[Path, Path | None]],
                deploy_dir: Path, baseline_path: Path, quantized: bool,
                config: dict[str, Any]) -> ExportResult:
    """Export, check and describe a YOLO model (and its dense FP32 baseline).

    The fidelity rule compares box mAP50-95 on the validation images (``val``: image and label
    paths), PyTorch's raw outputs and ONNX Runtime's each through the same NMS and matching;
    the output differences and the class agreement on confident anchors are reported beside.
    An INT8 model slower than the dense FP32 baseline is replaced by the trained weights in FP32
    (:func:`~sparsify.export.fallback.ship_not_slower`), judged by the same rule.

    Raises:
        ExportError: the ONNX checker, an FP32 export that does not match PyTorch, or integer
            kernels missing from a quantized graph.
        FidelityError: mAP50-95 of the ONNX model more than the tolerance from PyTorch's (the
            deployment folder is written all the same).
    """
    import contextlib

    from sparsify.export.deployment import fidelity, write_deployment
    from sparsify.export.fallback import FP32_SPARSE, ship_not_slower
    from sparsify.export.inspect import compare_with_torch, ort_session
    from sparsify.export.onnx_export import export_onnx
    from sparsify.quantization.fake_quant import fake_quant_bypassed

    deploy_dir.mkdir(parents=True, exist_ok=True)
    size = int(config["image_size"])
    num_classes = int(config["num_classes"])
    segment = config.get("ultralytics_task") == "segment"
    outputs = ["output0", "output1"] if segment else ["output0"]
    axes = {name: {0: "batch"} for name in ["images", *outputs]}
    onnx_args = {"input_names": ["images"], "output_names": outputs, "dynamic_axes": axes}
    first = torch.from_numpy(np.stack([letterbox(p, size) for p, _ in val[:BATCH]]))

    export_model = prepare_for_export(_fuse_fp32(copy.deepcopy(model)))
    model_path = export_onnx(export_model, (first[:1],), deploy_dir / "model.onnx", **onnx_args)
    export_onnx(prepare_for_export(_fuse_fp32(copy.deepcopy(baseline))), (first[:1],),
                baseline_path, **onnx_args)

    def judge(path: Path, fmt: str) -> Fidelity:
        # the FP32 fallback's outputs are compared with the QAT model in float (a conversion
        # check); its mAP with the trained model's (the run's reported metric)
        float_form = fake_quant_bypassed() if fmt == FP32_SPARSE else contextlib.nullcontext()
        with float_form:
            comparison = compare_with_torch(export_model, path, {"images": first.numpy()},
                                            keep_outputs=True)
        comparison.pop("top1_agreement", None)  # arg-max over anchors means nothing here
        ref, got = comparison.pop("outputs")
        agreement, confident = _class_agreement(ref[0], got[0], num_classes)
        comparison["class_agreement"] = agreement
        comparison["confident_anchors"] = confident
        session = ort_session(path)
        torch_map, onnx_map = BoxMAP(num_classes), BoxMAP(num_classes)
        for start in range(0, len(val), BATCH):
            chunk = val[start:start + BATCH]
            images = np.stack([letterbox(p, size) for p, _ in chunk])
            targets = [letterbox_boxes(label, image, size) for image, label in chunk]
            with torch.no_grad():
                out = export_model(torch.from_numpy(images))
            torch_map.update((out[0] if isinstance(out, (tuple, list)) else out).numpy(),
                             targets)
            onnx_map.update(session.run(["output0"], {"images": images})[0], targets)
        return fidelity("map50_95", torch_map.result()["map50_95"],
                        onnx_map.result()["map50_95"], len(val), comparison)

    def export_fp32(path: Path) -> Path:
        with fake_quant_bypassed():
            return export_onnx(export_model, (first[:1],), path, **onnx_args)

    one = first[:1].numpy()
    shipped = ship_not_slower(model_path, baseline_path, quantized=quantized,
                              make_inputs=lambda batch: {"images": np.repeat(one, batch, 0)},
                              judge=judge, export_fp32=export_fp32,
                              fp32_tolerance=FP32_MAX_TOLERANCE)
    quantized, result = shipped.quantized, shipped.fidelity

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
    return write_deployment(deploy_dir, shipped.path, baseline_path, quantized=quantized,
                            fidelity_result=result,
                            sample_inputs={"images": first[: min(4, len(first))].numpy()},
                            output_names=outputs, config=full_config,
                            readme=yolo_readme(full_config), fp32_tolerance=FP32_MAX_TOLERANCE,
                            shipping=shipped)


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
