"""train.resume: the per-run folder that keeps an interrupted run's last epoch and MLflow run.

The folder lies outside models/ (a DVC output, deleted before the stage runs) and is ignored
by git, so an interrupted run's state survives until train.resume picks it up.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import mlflow

from cxr.core.outputs import read_json, write_json
from cxr.core.params import Params
from cxr.core.paths import ProjectPaths
from cxr.tracking import run_exists

BACKUP_DIR = ".train_backup"
MLFLOW_RUN_FILE = "mlflow_run.json"


def backup_dir(paths: ProjectPaths, params: Params, fingerprint: str) -> Path:
    """Where this run keeps its last-epoch state: one folder per params and data."""
    settings = params.model_dump(mode="json")
    settings["train"].pop("resume")
    key = json.dumps({"params": settings, "data": fingerprint}, sort_keys=True)
    return paths.root / BACKUP_DIR / hashlib.sha256(key.encode()).hexdigest()[:16]


def fresh_backup_dir(paths: ProjectPaths, params: Params, fingerprint: str) -> Path:
    """Create the backup folder of this run; drop other states (all of them unless resuming)."""
    work = backup_dir(paths, params, fingerprint)
    if work.parent.exists():
        for stale in work.parent.iterdir():
            if stale != work or not params.train.resume:
                shutil.rmtree(stale)
    work.mkdir(parents=True, exist_ok=True)
    return work


def completed_epochs(work: Path, phase: str, first_epoch: int) -> int:
    """Epochs of `phase` an interrupted run finished (BackupAndRestore's record), else 0."""
    record = work / phase / "backup" / "training_metadata.json"
    if not record.exists():
        return 0
    return int(json.loads(record.read_text(encoding="utf-8"))["epoch"]) - first_epoch


def start_resumable_run(work: Path, resume: bool, experiment_id: str, tags: dict[str, str]) -> Any:
    """A new MLflow run, or the interrupted run's when resuming; its id is kept in `work`."""
    record = work / MLFLOW_RUN_FILE
    if resume and record.exists():
        run_id = str(read_json(record)["run_id"])
        if run_exists(run_id):
            return mlflow.start_run(run_id=run_id)
    run = mlflow.start_run(experiment_id=experiment_id, tags=tags)
    if resume:
        write_json(record, {"run_id": run.info.run_id})
    return run
