"""Make the offline example: a small ImageFolder of drawn shapes and a ResNet-18 checkpoint.

    python examples/image_classification/prepare.py OUT_DIR

writes OUT_DIR/shapes/{train,val}/<class>/*.png and OUT_DIR/resnet18_shapes_init.pth (randomly
initialised: no pretrained weights can be downloaded offline; online, leave --model out and
the catalog's ImageNet-pretrained model is used instead).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision

from sparsify.data.synthetic import make_synthetic_image_folder


def main(out: Path) -> None:
    classes = ("circle", "square", "triangle")
    make_synthetic_image_folder(out / "shapes", classes=classes, per_class=40, size=64,
                                split=True, seed=0, val_per_class=10)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(classes))
    torch.save({"state_dict": model.state_dict(), "arch_key": "resnet18"},
               out / "resnet18_shapes_init.pth")
    print(f"wrote {out / 'shapes'} and {out / 'resnet18_shapes_init.pth'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_data"))
