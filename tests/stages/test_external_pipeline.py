"""External datasets through real `dvc repro` / `dvc exp run`: one stage each, nothing retrained."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import STAGES, clean_env, copy_project, git_repo, run
from training_fixtures import TINY_PIPELINE, tiny_params

pytestmark = pytest.mark.slow  # a whole tiny pipeline, then one experiment: about 2 minutes

SITE_B = "{source: synthetic, synthetic: {seed: 7, exposure: 1.4, image_size: 48, counts: {covid: 8, normal: 8, viral_pneumonia: 8}}}"  # noqa: E501


def stages_run(output: str) -> list[str]:
    """The stages DVC ran, foreach stages with their key (external@site_b)."""
    return re.findall(r"Running stage '([\w@-]+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("external-e2e") / "project"
    params = tiny_params(changes=TINY_PIPELINE)
    params["evaluate"]["external"] = {}  # no external dataset, whatever params.yaml names
    copy_project(repo, params)
    env = clean_env()
    git_repo(repo, env)
    return repo, env


def test_with_no_external_dataset_the_pipeline_runs_and_compare_writes_an_empty_summary(project):
    repo, env = project
    # when the pipeline runs with evaluate.external = {}
    output = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    # then no external stage exists, and compare gathers nothing
    assert stages_run(output) == STAGES
    assert json.loads((repo / "metrics" / "external.json").read_text()) == {}


def test_adding_an_external_dataset_runs_only_its_stage_and_compare(project):
    repo, env = project
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "trained"], repo, env)
    # when an experiment adds phantoms of another seed and exposure as an external dataset
    output = run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", f"++evaluate.external.site_b={SITE_B}"],
        repo,
        env,
    )
    # then only its stage and compare ran: nothing was ingested, built or trained again
    assert stages_run(output) == ["external@site_b", "compare"]
    metrics = json.loads((repo / "metrics" / "external" / "site_b.json").read_text())
    assert metrics["images"] == 24 and metrics["source_shortcut_accuracy"] is not None
    # and the leaderboard and metrics/external.json show it
    board = json.loads((repo / "reports" / "compare" / "leaderboard.json").read_text())
    assert "site_b" in board["leaderboard"]["compact_cnn"]["external"]
    combined = json.loads((repo / "metrics" / "external.json").read_text())
    assert combined["site_b"]["accuracy"] == metrics["accuracy"]
    assert "site_b accuracy [95% CI]" in (repo / "reports/compare/leaderboard.md").read_text()
    # and dvc.lock records the stage with its own dataset's params
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    recorded = lock["external@site_b"]["params"]["params.yaml"]
    assert recorded["evaluate.external.site_b"]["synthetic"]["exposure"] == 1.4
    assert "evaluate.external" not in recorded
    # and a second repro runs only the always-changed compare
    again = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert stages_run(again) == ["compare"]
    # and dvc exp show lists the external metrics
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, env)
    assert "metrics/external/site_b.json" in shown
