"""dvc.yaml declares exactly what each stage reads, so DVC re-runs what a change affects."""

import ast
from pathlib import Path

import pytest
import yaml

from stages.paths import ProjectPaths

ROOT = Path(__file__).resolve().parents[1]
STAGE_NAMES = ["ingest", "build", "split", "train", "evaluate", "compare"]


def imported_stage_modules(module: str) -> set[str]:
    """Every stages/ module `module` imports, directly or through another stages/ module."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("stages.")
            ):
                pending.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                pending += [
                    a.name.split(".")[1] for a in node.names if a.name.startswith("stages.")
                ]
    return seen


@pytest.fixture(scope="module")
def pipeline() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_stage_order_and_commands(pipeline):
    # given dvc.yaml, then every stage is `python -m stages.<name>`, in pipeline order
    assert list(pipeline["stages"]) == STAGE_NAMES
    for name, stage in pipeline["stages"].items():
        assert stage["cmd"] == f"python -m stages.{name}"


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_code_deps_are_exactly_the_imported_modules(pipeline, name):
    # given a stage, when its imports are followed, then dvc.yaml lists exactly those files
    declared = {dep for dep in pipeline["stages"][name]["deps"] if dep.startswith("stages/")}
    expected = {f"stages/{module}.py" for module in imported_stage_modules(name)}
    assert declared == expected | {"stages/__init__.py"}


def test_outputs_match_the_paths_module(pipeline):
    # given the paths module, then each declared output is where the stage writes it
    paths = ProjectPaths(Path("."))

    def declared(stage: str) -> set[str]:
        entries = []
        for kind in ("outs", "metrics"):
            for entry in pipeline["stages"][stage].get(kind, []):
                entries.append(entry if isinstance(entry, str) else next(iter(entry)))
        return set(entries)

    def rel(path: Path) -> str:
        return path.as_posix()

    assert declared("ingest") == {
        rel(paths.raw_dir),
        rel(paths.manifest),
        rel(paths.downloads_dir),
        rel(paths.metrics("ingest")),
    }
    assert declared("build") == {
        rel(paths.images_table),
        rel(paths.pixel_cache),
        rel(paths.rejected_table),
        rel(paths.reports("build")),
        rel(paths.metrics("build")),
    }
    assert declared("split") == {rel(paths.split_dir), rel(paths.metrics("split"))}
    assert declared("train") == {
        rel(paths.models_dir),
        rel(paths.metrics("train")),
        rel(paths.history),
    }
    assert declared("evaluate") == {
        rel(paths.reports("evaluate")),
        rel(paths.evaluate_plots),
        rel(paths.metrics("evaluate")),
        rel(paths.predictions),
    }
    assert declared("compare") == {rel(paths.reports("compare")), rel(paths.metrics("compare"))}


def test_params_sections_exist(pipeline):
    # given params.yaml, then every params key a stage declares exists there
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage in pipeline["stages"].values():
        for key in stage.get("params", []):
            assert key.split(".")[0] in params


def test_compare_always_refreshes(pipeline):
    # compare reads MLflow runs DVC cannot see, so it must re-run every time
    assert pipeline["stages"]["compare"]["always_changed"] is True
