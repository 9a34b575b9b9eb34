"""Tests for the project's paths (cxr/core/paths.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.core.paths import SPLITS, ProjectPaths, paths_from_argv, workspace_root


def test_plain_checkout_is_its_own_workspace(tmp_path: Path) -> None:
    # Given a plain checkout
    checkout = tmp_path / "repo"
    checkout.mkdir()

    # When its workspace root is asked for
    root = workspace_root(checkout)

    # Then it is the checkout itself
    assert root == checkout.resolve()


def test_relative_path_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the current directory is a checkout
    monkeypatch.chdir(tmp_path)

    # When the workspace root of "." is asked for
    root = workspace_root(Path("."))

    # Then it is the absolute checkout
    assert root == tmp_path.resolve()
    assert root.is_absolute()


@pytest.mark.parametrize("inside", [".dvc/tmp/exps/xyz", ".dvc/tmp/exps/run/tmpab12/stages"])
def test_dvc_temp_experiment_maps_to_the_checkout(tmp_path: Path, inside: str) -> None:
    # Given the copy DVC makes for a temp or queued experiment inside a checkout
    checkout = tmp_path / "repo"
    experiment_copy = checkout / inside
    experiment_copy.mkdir(parents=True)

    # When its workspace root is asked for
    root = workspace_root(experiment_copy)

    # Then it is the user's checkout, not the throwaway copy
    assert root == checkout.resolve()


def test_a_folder_merely_named_tmp_is_not_an_experiment(tmp_path: Path) -> None:
    # Given a checkout that happens to sit under a folder named tmp (not under .dvc)
    checkout = tmp_path / "tmp" / "exps" / "repo"
    checkout.mkdir(parents=True)

    # When its workspace root is asked for
    root = workspace_root(checkout)

    # Then it is the checkout itself
    assert root == checkout.resolve()


def test_root_option_sets_every_path(tmp_path: Path) -> None:
    # Given a stage command line naming a root
    argv = ["--root", str(tmp_path)]

    # When it is parsed
    paths = paths_from_argv(argv, None)

    # Then every path of the data lifecycle lies under that root
    assert paths == ProjectPaths(tmp_path)
    assert paths.params == tmp_path / "params.yaml"
    assert paths.raw_dir == tmp_path / "data" / "raw"
    assert paths.images_table == tmp_path / "data" / "interim" / "images.parquet"
    assert [paths.split_table(split) for split in SPLITS] == [
        tmp_path / "data" / "processed" / f"{split}.parquet" for split in ("train", "val", "test")
    ]
    assert paths.model_file() == tmp_path / "models" / "model.keras"
    assert paths.model_file("sklearn") == tmp_path / "models" / "model.joblib"
    assert paths.run_record == tmp_path / "models" / "run.json"
    assert paths.metrics("split") == tmp_path / "metrics" / "split.json"
    assert paths.reports("build") == tmp_path / "reports" / "build"


def test_root_defaults_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stage run from a checkout without --root
    monkeypatch.chdir(tmp_path)

    # When its empty command line is parsed
    paths = paths_from_argv([], "a stage")

    # Then the root is the current directory
    assert paths.root == Path.cwd()
