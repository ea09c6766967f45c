#!/usr/bin/env bash
# Offline image-classification sparse transfer on generated data (a few minutes on 2 cores).
# Usage: examples/image_classification/run.sh [OUT_DIR]   (needs the package installed)
set -euo pipefail
out="${1:-example_output}"
python "$(dirname "$0")/prepare.py" "$out"
sparsify.run sparse-transfer --use-case image_classification \
    --data "$out/shapes" --model "$out/resnet18_shapes_init.pth" --optim-level 0.5 \
    --recipe-args '{"num_epochs": 12, "init_lr": 0.01}' \
    --train-kwargs '{"image_size": 64, "batch_size": 16}' \
    --working-dir "$out/runs"
