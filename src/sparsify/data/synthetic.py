"""A small, learnable image-classification dataset drawn with PIL, for tests and examples.

Each class is a shape (circle, square, triangle...); every image varies the colours, the
position, the size and the rotation, so a model has to learn the shape itself.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "diamond",
    "ring",
    "star",
    "hexagon",
)
DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")


def make_synthetic_image_folder(
    root: Path | str,
    classes: Sequence[str] = DEFAULT_CLASSES,
    per_class: int = 12,
    size: int = 64,
    split: bool = False,
    seed: int = 0,
    val_per_class: int | None = None,
) -> Path:
    """Write a folder of generated shape images, one class folder per shape.

    A class named after a shape in :data:`SHAPES` draws that shape; other names get the unused
    shapes in order.

    Args:
        root: the folder to write (created if missing).
        classes: class names, at most ``len(SHAPES)``.
        per_class: images per class (per class in ``train/`` when ``split``).
        size: width and height of the images, in pixels (at least 16).
        split: write ``root/train/<class>/`` and ``root/val/<class>/`` instead of
            ``root/<class>/``.
        seed: the same seed writes the same images.
        val_per_class: images per class in ``val/`` when ``split`` (default
            ``max(2, per_class // 4)``).

    Returns:
        ``root``.

    Raises:
        ValueError: bad arguments (too many or duplicate classes, non-positive counts, a size
            below 16, a class name that is not a plain folder name).
    """
    classes = list(classes)
    _check_args(classes, per_class, size, val_per_class)
    root = Path(root)
    shapes = _assign_shapes(classes)
    rng = random.Random(seed)
    if split:
        n_val = val_per_class if val_per_class is not None else max(2, per_class // 4)
        parts = [(root / "train", per_class), (root / "val", n_val)]
    else:
        parts = [(root, per_class)]
    for folder, count in parts:
        for name in classes:
            class_dir = folder / name
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = _draw(shapes[name], size, rng)
                image.save(class_dir / f"{name}_{i:04d}.png")
    logger.debug("Wrote a synthetic image folder at %s (%s)", root, ", ".join(classes))
    return root


def _check_args(classes: list[str], per_class: int, size: int, val_per_class: int | None) -> None:
    if not classes:
        raise ValueError("classes must name at least one class; got none.")
    if len(classes) > len(SHAPES):
        raise ValueError(
            f"At most {len(SHAPES)} classes can be drawn ({', '.join(SHAPES)}); got {len(classes)}."
        )
    if len(set(classes)) != len(classes):
        raise ValueError(f"Class names must be unique; got {classes}.")
    for name in classes:
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise ValueError(f"Class name {name!r} is not a plain folder name.")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1; got {per_class}.")
    if val_per_class is not None and val_per_class < 1:
        raise ValueError(f"val_per_class must be at least 1; got {val_per_class}.")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels; got {size}.")


def _assign_shapes(classes: Sequence[str]) -> dict[str, str]:
    assigned = {name: name for name in classes if name in SHAPES}
    spare = iter(s for s in SHAPES if s not in assigned.values())
    return {name: assigned.get(name) or next(spare) for name in classes}


def _draw(shape: str, size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(170, 255) for _ in range(3))
    colour = tuple(rng.randint(0, 110) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    # A few faint specks so that no two images share a background.
    for _ in range(rng.randint(3, 8)):
        x, y = rng.randrange(size), rng.randrange(size)
        speck = tuple(max(0, c - rng.randint(10, 40)) for c in background)
        draw.point((x, y), fill=speck)
    r = rng.uniform(0.2, 0.32) * size
    margin = r + 2
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    jitter = rng.uniform(-15.0, 15.0)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "ring":
        width = max(2, int(r / 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=width)
    elif shape == "square":
        draw.regular_polygon((cx, cy, r), n_sides=4, rotation=jitter, fill=colour)
    elif shape == "diamond":
        # A square turned by 45 degrees; the square's own turn stays within 15 degrees.
        draw.regular_polygon((cx, cy, r), n_sides=4, rotation=45 + jitter, fill=colour)
    elif shape == "triangle":
        draw.regular_polygon((cx, cy, r), n_sides=3, rotation=jitter, fill=colour)
    elif shape == "hexagon":
        draw.regular_polygon((cx, cy, r), n_sides=6, rotation=jitter, fill=colour)
    elif shape == "cross":
        arm = max(2.0, r / 3)
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=colour)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=colour)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = math.radians(jitter + 36 * k - 90)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    else:  # pragma: no cover - _assign_shapes only hands out SHAPES
        raise AssertionError(f"unknown shape {shape!r}")
    return image
