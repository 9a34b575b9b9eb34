"""The per-run folder that keeps a training run's last finished epoch and MLflow run id.

Every Keras run keeps it, whatever CXR_RESUME says, so any interrupted run (killed, out of
memory, a power cut) can be continued with CXR_RESUME=1 and the same params and data.
The folder lies outside models/ (a DVC output, deleted before the stage runs) and is ignored
by git; a run that ends removes it, and a run without CXR_RESUME starts from an empty one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from mlflow import ActiveRun

from cxr.core.outputs import read_json, write_json
from cxr.core.params import Params
from cxr.core.paths import ProjectPaths
from cxr.tracking.runs import open_run, run_exists

BACKUP_DIR = ".train_backup"
MLFLOW_RUN_FILE = "mlflow_run.json"


def backup_dir(paths: ProjectPaths, params: Params, fingerprint: str) -> Path:
    """Where this run keeps its last-epoch state: one folder per params and data."""
    key = json.dumps(
        {"params": params.model_dump(mode="json"), "data": fingerprint}, sort_keys=True
    )
    return paths.root / BACKUP_DIR / hashlib.sha256(key.encode()).hexdigest()[:16]


def fresh_backup_dir(paths: ProjectPaths, params: Params, fingerprint: str, resume: bool) -> Path:
    """Create the backup folder of this run; drop other states, and its own unless `resume`."""
    work = backup_dir(paths, params, fingerprint)
    if work.parent.exists():
        for stale in work.parent.iterdir():
            # Without resuming a run starts afresh: an earlier run's epochs must not leak in.
            if stale != work or not resume:
                shutil.rmtree(stale)
    work.mkdir(parents=True, exist_ok=True)
    return work


def completed_epochs(work: Path, phase: str, first_epoch: int) -> int:
    """Epochs of `phase` an interrupted run finished (its last backup's record), else 0."""
    record = work / phase / "backup" / "training_metadata.json"
    if not record.exists():
        return 0
    return int(json.loads(record.read_text(encoding="utf-8"))["epoch"]) - first_epoch


def interrupted_run(work: Path) -> str | None:
    """The MLflow run an interrupted run kept in `work`, when the current store still holds it."""
    record = work / MLFLOW_RUN_FILE
    if not record.exists():
        return None
    run_id = str(read_json(record)["run_id"])
    return run_id if run_exists(run_id) else None


def start_resumable_run(
    work: Path, resumed: str | None, experiment_id: str, tags: dict[str, str], cwd: Path
) -> ActiveRun:
    """Reopen run `resumed`, or start a new run; its id is kept in `work` for a later resume."""
    run = open_run(experiment_id, tags, resumed, cwd)
    write_json(work / MLFLOW_RUN_FILE, {"run_id": run.info.run_id})
    return run
