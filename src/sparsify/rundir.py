"""The run folder: a new timestamped folder per run, never reused (light, no torch)."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: the mark of a run folder whose training has not finished (it says how to go on)
INCOMPLETE = "INCOMPLETE"


def launch_rank() -> tuple[int, int]:
    """``(rank, world size)`` of a ``torchrun`` / ``accelerate launch`` start; ``(0, 1)`` alone."""
    return int(os.environ.get("RANK") or 0), int(os.environ.get("WORLD_SIZE") or 1)


def run_folder_name(use_case_id: str, now: _dt.datetime | None = None) -> str:
    """``sparse_transfer_<use_case>_<YYYY_MM_DD_HH_MM_SS>``."""
    stamp = (now or _dt.datetime.now()).strftime("%Y_%m_%d_%H_%M_%S")
    return f"sparse_transfer_{use_case_id}_{stamp}"


def propose_run_dir(working_dir: Path, use_case_id: str, now: _dt.datetime | None = None) -> Path:
    """The folder a run would create: the timestamped name, with ``_2``, ``_3``... when taken."""
    base = working_dir / run_folder_name(use_case_id, now)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    return candidate


def create_run_dir(working_dir: Path, use_case_id: str) -> Path:
    """Create the run folder atomically (``mkdir`` fails if another run took the name).

    Raises:
        UsageError: the working directory cannot be created or written (the reason given).
    """
    from sparsify.errors import UsageError

    try:
        working_dir.mkdir(parents=True, exist_ok=True)
        while True:
            candidate = propose_run_dir(working_dir, use_case_id)
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
    except FileExistsError:
        raise UsageError(f"--working-dir {working_dir}: a file is in the way of that folder.",
                         hint="Pass --working-dir a folder (it is created if missing).") from None
    except OSError as exc:
        raise UsageError(f"Cannot create the run folder under --working-dir {working_dir}: "
                         f"{exc.strerror or exc}.",
                         hint="Pass --working-dir a folder you can write to.") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resume_command(run_dir: Path) -> str:
    """The command that resumes the run in ``run_dir``."""
    return f"sparsify.run sparse-transfer --resume {shlex.quote(str(run_dir))}"


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Append every log record to ``run_dir/run.log`` while the block runs."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
