from __future__ import annotations

import os

import pytest

# Ultralytics must never pip-install anything during the tests (read once, when imported).
os.environ.setdefault("YOLO_AUTOINSTALL", "false")


@pytest.fixture(autouse=True)
def _isolated_zoo(tmp_path_factory, monkeypatch):
    """Tests never see the developer's local zoo or caches."""
    root = tmp_path_factory.mktemp("zoo")
    monkeypatch.setenv("SPARSIFY_ZOO_PATH", str(root))
    monkeypatch.setenv("SPARSEZOO_MODELS_PATH", str(root / "sparsezoo"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root
