from __future__ import annotations

import os

import pytest

# Ultralytics must never pip-install anything during the tests (read once, when imported).
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
_SESSION_ENVIRONMENT = dict(os.environ)


def _restore_environment() -> None:
    # PYTEST_CURRENT_TEST is pytest's own, set and removed by it around each test phase
    for key in set(os.environ) - set(_SESSION_ENVIRONMENT) - {"PYTEST_CURRENT_TEST"}:
        del os.environ[key]
    os.environ.update(_SESSION_ENVIRONMENT)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Every test starts and ends with the environment the session started with: what an
    import writes into ``os.environ`` (importing Ultralytics sets ``OMP_NUM_THREADS=1`` and
    more, in a test or a module fixture) does not reach the CLI subprocesses of later tests
    (one thread: other float rounding than a user's run). Defined first, so it runs before
    ``monkeypatch`` is set up and after it is undone."""
    _restore_environment()
    yield
    _restore_environment()


@pytest.fixture(autouse=True)
def _isolated_zoo(tmp_path_factory, monkeypatch):
    """Tests never see the developer's local zoo or caches."""
    root = tmp_path_factory.mktemp("zoo")
    monkeypatch.setenv("SPARSIFY_ZOO_PATH", str(root))
    monkeypatch.setenv("SPARSEZOO_MODELS_PATH", str(root / "sparsezoo"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root

