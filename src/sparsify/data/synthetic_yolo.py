"""A small YOLO-format dataset of drawn shapes with exact boxes and polygons, for tests and
examples.

Every object is drawn as a filled polygon (a circle is a 24-gon), so the polygon written to the
segmentation label is exactly the drawn outline, and the detection box is its bounding box.
Objects sit in separate cells of a grid, so they never overlap.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

SHAPE_SIDES: dict[str, int] = {"triangle": 3, "square": 4, "circle": 24, "hexagon": 6}
DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
LAYOUTS = ("split", "flat", "yaml")


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    sides = SHAPE_SIDES[shape]
    start = turn + (45.0 if shape == "square" else -90.0)
    return [(cx + r * math.cos(math.radians(start + 360.0 * k / sides)),
             cy + r * math.sin(math.radians(start + 360.0 * k / sides))) for k in range(sides)]


def draw_sample(classes: Sequence[str], size: int, rng: random.Random, max_objects: int = 3,
                background: bool = False) -> tuple[Image.Image, list[tuple[int, list[tuple[float, float]]]]]:
    """One image and its objects as ``(class id, polygon in pixels)``."""
    bg = tuple(rng.randint(170, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, list[tuple[float, float]]]] = []
    if background:
        return image, objects
    grid = 2
    cell = size / grid
    cells = [(i, j) for i in range(grid) for j in range(grid)]
    rng.shuffle(cells)
    for i, j in cells[: rng.randint(1, max_objects)]:
        cls = rng.randrange(len(classes))
        r = rng.uniform(0.28, 0.42) * cell
        cx = (i + 0.5) * cell + rng.uniform(-0.05, 0.05) * cell
        cy = (j + 0.5) * cell + rng.uniform(-0.05, 0.05) * cell
        points = _polygon(classes[cls], cx, cy, r, rng.uniform(-12.0, 12.0))
        colour = tuple(rng.randint(0, 110) for _ in range(3))
        draw.polygon(points, fill=colour)
        objects.append((cls, points))
    return image, objects


def label_lines(objects: Sequence[tuple[int, list[tuple[float, float]]]], size: int, task: str
                ) -> list[str]:
    """YOLO label lines (normalised to [0, 1]) for ``task`` ``detect`` or ``segment``."""
    lines = []
    for cls, points in objects:
        xs = [min(max(x / size, 0.0), 1.0) for x, _ in points]
        ys = [min(max(y / size, 0.0), 1.0) for _, y in points]
        if task == "segment":
            coords = " ".join(f"{x:.6f} {y:.6f}" for x, y in zip(xs, ys))
            lines.append(f"{cls} {coords}")
        else:
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            lines.append(f"{cls} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} "
                         f"{y1 - y0:.6f}")
    return lines


def make_synthetic_yolo_dataset(
    root: Path | str,
    task: str = "detect",
    classes: Sequence[str] = DEFAULT_CLASSES,
    train_images: int = 16,
    val_images: int = 6,
    size: int = 64,
    layout: str = "split",
    backgrounds: int = 0,
    names_file: str = "classes.txt",
    seed: int = 0,
) -> Path:
    """Write a YOLO dataset of drawn shapes.

    Args:
        root: the folder to write (created).
        task: ``detect`` (box labels) or ``segment`` (polygon labels).
        classes: class names, each one of :data:`SHAPE_SIDES`.
        train_images / val_images: number of images per side.
        size: image width and height in pixels (at least 32).
        layout: ``split`` (images/{train,val} + labels/{train,val}), ``flat`` (images/ +
            labels/, for the seeded split) or ``yaml`` (``split`` plus ``data.yaml`` with path,
            train, val and names; the function then returns the YAML's path).
        backgrounds: extra training images with nothing drawn and no label file.
        names_file: ``classes.txt`` or ``data.yaml`` (names only) for the folder layouts.
        seed: the same seed writes the same dataset.

    Returns:
        ``root`` (or ``root/data.yaml`` for the ``yaml`` layout).

    Raises:
        ValueError: bad arguments.
    """
    if task not in ("detect", "segment"):
        raise ValueError(f"task must be 'detect' or 'segment', got {task!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    unknown = [c for c in classes if c not in SHAPE_SIDES]
    if unknown or not classes:
        raise ValueError(f"classes must be shapes among {', '.join(SHAPE_SIDES)}, got {unknown}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if train_images < 1 or val_images < 0 or backgrounds < 0:
        raise ValueError("train_images must be >= 1, val_images and backgrounds >= 0")
    root = Path(root)
    rng = random.Random(seed)
    sides = [("train", train_images, backgrounds), ("val", val_images, 0)]
    for side, count, empty in sides:
        sub = "" if layout == "flat" else side
        img_dir, lbl_dir = root / "images" / sub, root / "labels" / sub
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count + empty):
            image, objects = draw_sample(classes, size, rng, background=i >= count)
            stem = f"{side}_{i:04d}"
            image.save(img_dir / f"{stem}.png")
            if objects:
                (lbl_dir / f"{stem}.txt").write_text("\n".join(label_lines(objects, size, task))
                                                     + "\n")
    names = list(classes)
    if layout == "yaml":
        import yaml

        path = root / "data.yaml"
        path.write_text(yaml.safe_dump({"path": ".", "train": "images/train",
                                        "val": "images/val", "names": names}, sort_keys=False))
        return path
    if names_file == "data.yaml":
        import yaml

        (root / "data.yaml").write_text(yaml.safe_dump({"names": names}))
    else:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root
