"""`python3 -m stages.external NAME`: another source's images, ingested, decoded, scored.

A tiny compact_cnn is trained once per module through the real stages (phantoms, TensorFlow,
MLflow on SQLite in tmp_path); each test adds an external dataset to params.yaml and runs the
external stage, as dvc.yaml's external@<name> does.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from training_fixtures import TINY_PIPELINE, tiny_params

from cxr.core.paths import ExternalDataPaths, ProjectPaths
from cxr.ingestion.phantoms import write_phantom_dataset
from stages import build, compare, evaluate, external, ingest, split, train

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT.parent / "shared" / "datasets" / "covid19-dataset"

pytestmark = pytest.mark.slow  # trains a tiny CNN once per module: about 20 s on two cores


# TINY_PIPELINE on the phantoms, with no Grad-CAM, grid or ensemble to draw or train.
TINY_EXTERNAL = (
    *TINY_PIPELINE,
    {
        "data": {"source": "synthetic"},
        "build": {"cache_size": 64},
        "train": {"baseline": {"image_size": 16}},
        "evaluate": {"gradcam_images": 0, "misclassified_grid": 0},
        "compare": {"ensemble_size": 0},
    },
)


def trained_project(root: Path, params: dict[str, Any]) -> ProjectPaths:
    """A checkout where ingest, build, split, train and evaluate ran on `params`."""
    paths = ProjectPaths(root)
    root.mkdir(parents=True)
    paths.params.write_text(yaml.safe_dump(params), encoding="utf-8")
    for stage in (ingest, build, split, train, evaluate):
        assert stage.main(["--root", str(root)]) == 0, stage.__name__
    return paths


def with_external(paths: ProjectPaths, params: dict[str, Any], **external: Any) -> None:
    """Write params.yaml with evaluate.external set to `external`."""
    changed = copy.deepcopy(params)
    changed["evaluate"]["external"] = external
    paths.params.write_text(yaml.safe_dump(changed), encoding="utf-8")


def run_external(paths: ProjectPaths, name: str) -> int:
    """What dvc.yaml's external@<name> runs."""
    return external.main([name, "--root", str(paths.root)])


@pytest.fixture(scope="module")
def project(tmp_path_factory, store) -> tuple[ProjectPaths, dict[str, Any]]:
    params = tiny_params(changes=TINY_EXTERNAL)
    return trained_project(tmp_path_factory.mktemp("external") / "repo", params), params


def test_phantoms_of_another_seed_and_exposure_are_scored_and_logged(project, capsys):
    paths, params = project
    # given phantoms of another seed taken at another exposure (another scanner)
    site_b = {
        "source": "synthetic",
        "synthetic": {
            "seed": 7,
            "exposure": 1.6,
            "image_size": 48,
            "counts": {"covid": 10, "normal": 10, "viral_pneumonia": 10},
        },
    }
    with_external(paths, params, site_b=site_b)
    capsys.readouterr()
    # when the external stage runs
    assert run_external(paths, "site_b") == 0
    # then it ingested and decoded them into their own outputs, like the training data
    external = ExternalDataPaths(paths.root, "site_b")
    assert len(list((external.raw_dir / "covid").glob("*.png"))) == 10
    images = pd.read_parquet(external.images_table)
    assert len(images) == 30 and set(images["label"]) == {"covid", "normal", "viral_pneumonia"}
    # and its metrics hold the five figures with CIs, the drop and the shortcut check
    metrics = json.loads(external.external_metrics.read_text())
    internal = json.loads(paths.summary("evaluate").read_text())
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "covid_sensitivity"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
        assert metrics[f"{key}_drop"] == pytest.approx(internal[f"test_{key}"] - metrics[key])
    assert metrics["images"] == 30 and metrics["renormalised"] is False
    # a brighter scanner is told apart from the training source by pixels alone
    assert metrics["source_shortcut_accuracy"] >= 0.9
    # and the metrics hold scalars and short names only: the sentences are in summary.md
    leaves = [value for value in metrics.values() if not isinstance(value, dict)]
    assert not [value for value in leaves if isinstance(value, list | tuple)]
    assert not [value for value in leaves if isinstance(value, str) and len(value) > 64]
    # and the figures and summary are there
    for name in ("confusion_matrix.png", "roc_curves.png", "pr_curves.png", "predictions.csv"):
        assert (external.external_reports / name).stat().st_size > 0, name
    summary = (external.external_reports / "summary.md").read_text()
    assert "Source shortcut accuracy" in summary and "shortcut trap" in summary
    assert "scored on all 3 classes of the model" in summary
    # and the printed lines say the scores, the drop and the shortcut
    printed = capsys.readouterr().out
    assert "external site_b: accuracy" in printed and "internal test accuracy" in printed
    assert "source shortcut accuracy" in printed
    # and the model's MLflow run holds them as external_site_b_*, with the figures
    run = MlflowClient().get_run(internal["mlflow_run_id"])
    assert run.data.metrics["external_site_b_accuracy"] == pytest.approx(metrics["accuracy"])
    assert "external_site_b_source_shortcut_accuracy" in run.data.metrics
    assert "external_site_b_accuracy_drop" in run.data.metrics
    assert run.data.tags["external_site_b_classes"] == "covid,normal,viral_pneumonia"
    logged = {item.path for item in MlflowClient().list_artifacts(run.info.run_id, "external")}
    assert logged == {"external/site_b"}
    # when compare runs, then the leaderboard shows the external columns and gathers the metrics
    assert compare.main(["--root", str(paths.root)]) == 0
    board = json.loads((paths.reports("compare") / "leaderboard.json").read_text())
    entry = board["leaderboard"]["compact_cnn"]["external"]["site_b"]
    assert entry["accuracy"] == pytest.approx(metrics["accuracy"])
    assert entry["source_shortcut_accuracy"] == pytest.approx(metrics["source_shortcut_accuracy"])
    assert json.loads(paths.metrics("compare").read_text())["best_model"] == "compact_cnn"
    markdown = (paths.reports("compare") / "leaderboard.md").read_text()
    assert "site_b accuracy [95% CI]" in markdown and "site_b shortcut" in markdown
    combined = json.loads(paths.metrics("external").read_text())
    assert list(combined) == ["site_b"] and combined["site_b"] == {
        key: metrics[key]
        for key in ("images", "accuracy", "f1_macro", "accuracy_drop", "source_shortcut_accuracy")
    }


def test_a_subset_of_the_classes_is_scored_on_those_renormalised(project, capsys):
    paths, params = project
    # given an external set of covid and normal phantoms only (the model knows three classes)
    two = {"source": "synthetic", "synthetic": {"seed": 8, "counts": {"covid": 6, "normal": 6}}}
    with_external(paths, params, two_classes=two)
    capsys.readouterr()
    # when it is scored
    assert run_external(paths, "two_classes") == 0
    # then it is scored on those two classes, renormalised, and the metrics, summary.md and the
    # printed line say so
    external = ExternalDataPaths(paths.root, "two_classes")
    metrics = json.loads(external.external_metrics.read_text())
    assert metrics["renormalised"] is True and metrics["classes"] == {"covid": 6, "normal": 6}
    summary = (external.external_reports / "summary.md").read_text()
    assert "scored on 2 of the model's 3 classes (covid, normal)" in summary
    assert "probabilities renormalised over them" in summary
    assert "scored on 2 of the model's 3 classes" in capsys.readouterr().out
    # and the drop is measured from the internal test images of the same two classes
    internal = pd.read_csv(paths.predictions)
    assert set(internal["actual"]) == {"covid", "normal", "viral_pneumonia"}
    assert metrics["accuracy_drop"] == pytest.approx(
        metrics["internal"]["accuracy"] - metrics["accuracy"]
    )


def test_a_class_the_model_does_not_know_stops_in_one_line_unless_mapped_or_left_out(
    project, tmp_path, capsys
):
    paths, params = project
    # given a folder source with covid, normal and lung_opacity images (the model lacks the last)
    source = tmp_path / "site_c"
    write_phantom_dataset(source, {"covid": 4, "normal": 4, "lung_opacity": 3}, 48, 0.5, 11)
    with_external(paths, params, site_c={"source": str(source)})
    # when the external stage runs, then it stops in one line naming the class and the keys
    assert run_external(paths, "site_c") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: evaluate.external.site_c: class 'lung_opacity' (3 images)")
    assert "evaluate.external.site_c.label_map" in error
    assert not ExternalDataPaths(paths.root, "site_c").external_metrics.exists()
    # when the class is left out, it is scored on the rest
    with_external(paths, params, site_c={"source": str(source), "classes": ["covid", "normal"]})
    assert run_external(paths, "site_c") == 0
    metrics = json.loads(ExternalDataPaths(paths.root, "site_c").external_metrics.read_text())
    assert metrics["classes"] == {"covid": 4, "normal": 4}
    # and when it is mapped onto a class the model knows, its images count as that class
    (source / "lung_opacity").rename(source / "Pneumonia")
    mapped = {"source": str(source), "label_map": {"Pneumonia": "viral_pneumonia"}}
    with_external(paths, params, site_c=mapped)
    assert run_external(paths, "site_c") == 0
    metrics = json.loads(ExternalDataPaths(paths.root, "site_c").external_metrics.read_text())
    assert metrics["classes"] == {"covid": 4, "normal": 4, "viral_pneumonia": 3}


def test_an_unknown_external_name_is_one_line(project, capsys):
    paths, params = project
    with_external(paths, params)
    assert run_external(paths, "nowhere") == 2
    assert "evaluate.external.nowhere: not in params.yaml (datasets: none)" in (
        capsys.readouterr().err
    )


@pytest.mark.skipif(not DATASET.is_dir(), reason=f"{DATASET} is absent (shared dataset)")
def test_a_held_back_part_of_covid19_dataset(tmp_path_factory, store, capsys):
    # given a few images of each class of covid19-dataset's train folder to train on, and
    # other images of the same folder held back as an external set (copies in tmp only)
    base = tmp_path_factory.mktemp("covid19")
    training, held_back = base / "training", base / "held_back"
    for folder in sorted((DATASET / "train").iterdir()):
        files = sorted(path for path in folder.iterdir() if path.is_file())
        for target, chosen in ((training, files[:12]), (held_back, files[-6:])):
            (target / folder.name).mkdir(parents=True)
            for path in chosen:
                shutil.copy2(path, target / folder.name / path.name)
    params = tiny_params(changes=[*TINY_EXTERNAL, {"data": {"source": str(training)}}])
    paths = trained_project(base / "repo", params)
    # when the held-back part is scored as an external dataset
    with_external(paths, params, held_back={"source": str(held_back)})
    capsys.readouterr()
    assert run_external(paths, "held_back") == 0
    # then its 18 images were read by the training data's code (class folders canonicalised)
    metrics = json.loads(ExternalDataPaths(paths.root, "held_back").external_metrics.read_text())
    assert metrics["classes"] == {"covid": 6, "normal": 6, "viral_pneumonia": 6}
    assert metrics["layout"] == "class_folders" and metrics["rejected_files"] == 0
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["accuracy_ci_low"] is not None
    # and the shortcut check compared them with as many training images of each class
    assert metrics["source_shortcut_images_per_source"] == 18
    assert 0.0 <= metrics["source_shortcut_accuracy"] <= 1.0
    assert "external held_back: accuracy" in capsys.readouterr().out
