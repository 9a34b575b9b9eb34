"""dvc.yaml declares exactly what each stage reads, so DVC re-runs what a change affects."""

from pathlib import Path

import pytest
import yaml
from import_graph import (
    ROOT,
    all_modules,
    direct_imports,
    import_cycles,
    imported_folders,
    package_of,
)

from cxr.core.paths import ExternalDataPaths, ProjectPaths

# The stages of dvc.yaml in order, one module of stages/ each: `external` is one stage per
# external dataset (foreach over evaluate.external).
PIPELINE_STAGES = [
    "ingest",
    "build",
    "split",
    "pretrain",
    "train",
    "evaluate",
    "external",
    "compare",
]
EXTERNAL_CMD = "python3 -m stages.external ${key}"
# The library's packages, bottom to top: each imports only packages of a lower rank.
STACK = {
    "core": 0,
    "tracking": 1,
    "ingestion": 1,
    "images": 1,
    "splitting": 1,
    "models": 2,
    "training": 3,
    "evaluation": 3,
    "comparison": 4,
    "external": 4,
    "serving": 5,
}


def stage_body(stage: dict) -> dict:
    """A stage's cmd, deps, params and outputs: under `do` for a foreach stage."""
    return stage.get("do", stage)


@pytest.fixture(scope="module")
def pipeline() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_stage_order_and_commands(pipeline):
    # given dvc.yaml, then every stage is `python -m stages.<name>`, in pipeline order
    assert list(pipeline["stages"]) == PIPELINE_STAGES
    for name, stage in pipeline["stages"].items():
        if name == "external":
            assert stage["foreach"] == "${evaluate.external}"
            assert stage["do"]["cmd"] == EXTERNAL_CMD
        else:
            assert stage["cmd"] == f"python3 -m stages.{name}"


@pytest.mark.parametrize("name", PIPELINE_STAGES)
def test_code_deps_are_the_folders_of_the_imported_modules(pipeline, name):
    # given a stage, when its imports are followed through the cxr package (lazy ones too),
    # then dvc.yaml lists its module, the package files above it and exactly the library folders
    # those imports reach: nothing it does not run, nothing it runs missing
    deps = stage_body(pipeline["stages"][name])["deps"]
    declared = {dep for dep in deps if dep.startswith(("stages/", "cxr/"))}
    assert declared == imported_folders(f"stages.{name}")
    # and a listed folder is a package of the stack, never a single module inside one
    assert all(dep.endswith(".py") or dep.removeprefix("cxr/") in STACK for dep in declared)


def test_the_packages_form_a_strict_stack():
    # given every import between the library's packages (lazy ones too), then each goes down
    # the stack: no package imports one of its own rank or above
    upward = [
        f"{module} imports {target}"
        for module in all_modules()
        if module.startswith("cxr.") and module.count(".") >= 2
        for target in direct_imports(module)
        if target.startswith("cxr.")
        and target.count(".") >= 1
        and package_of(target) != package_of(module)
        and STACK[package_of(target)] >= STACK[package_of(module)]
    ]
    assert upward == []


def test_every_package_has_a_rank_in_the_stack():
    packages = {path.parent.name for path in (ROOT / "cxr").glob("*/__init__.py")}
    assert packages == set(STACK)


def test_ingest_does_not_depend_on_decoding_or_splitting_code(pipeline):
    deps = pipeline["stages"]["ingest"]["deps"]
    assert "cxr/images" not in deps and "cxr/splitting" not in deps


def test_evaluate_does_not_depend_on_external_validation_or_ingestion(pipeline):
    deps = pipeline["stages"]["evaluate"]["deps"]
    assert "cxr/external" not in deps and "cxr/ingestion" not in deps


@pytest.mark.parametrize("name", ["ingest", "build", "split"])
def test_data_stages_depend_on_no_model_training_or_evaluation_code(pipeline, name):
    # a change to a model, training or evaluation module must not re-decode the dataset
    code = [dep for dep in pipeline["stages"][name]["deps"] if dep.startswith("cxr/")]
    assert code and not [
        dep for dep in code if dep.startswith(("cxr/models", "cxr/training", "cxr/evaluation"))
    ]


def test_stages_holds_one_module_per_pipeline_stage():
    assert sorted(path.stem for path in (ROOT / "stages").glob("*.py")) == sorted(
        [*PIPELINE_STAGES, "__init__"]
    )


def test_no_import_cycles():
    # a cycle would tie two concerns into one; each found cycle is listed as a module chain
    assert import_cycles() == []


def test_outputs_match_the_paths_module(pipeline):
    # given the paths module, then each declared output is where the stage writes it
    paths = ProjectPaths(Path("."))

    def declared(stage: str) -> set[str]:
        entries = []
        for kind in ("outs", "metrics", "plots"):
            for entry in stage_body(pipeline["stages"][stage]).get(kind, []):
                entries.append(entry if isinstance(entry, str) else next(iter(entry)))
        return set(entries)

    def rel(path: Path) -> str:
        return path.as_posix()

    assert declared("ingest") == {
        rel(paths.raw_dir),
        rel(paths.manifest),
        rel(paths.ingest_rejected),
        rel(paths.downloads_dir),
        rel(paths.summary("ingest")),
    }
    assert declared("build") == {
        rel(paths.images_table),
        rel(paths.pixel_cache),
        rel(paths.rejected_table),
        rel(paths.reports("build")),
        rel(paths.summary("build")),
    }
    assert declared("split") == {rel(paths.split_dir), rel(paths.summary("split"))}
    assert declared("pretrain") == {rel(paths.pretrained_dir)}
    assert declared("train") == {
        rel(paths.models_dir),
        rel(paths.metrics("train")),
        rel(paths.summary("train")),
        rel(paths.history),
    }
    assert declared("evaluate") == {
        rel(paths.reports("evaluate")),
        rel(paths.evaluate_plots),
        rel(paths.metrics("evaluate")),
        rel(paths.summary("evaluate")),
        rel(paths.predictions),
    }
    external = ExternalDataPaths(Path("."), "${key}")
    assert declared("external") == {
        rel(external.raw_dir),
        rel(external.interim_dir),
        rel(external.downloads_dir),
        rel(external.external_metrics),
        rel(external.external_reports),
    }
    # and everything external@<name> writes under data/ is in those folders
    for path in (external.manifest, external.images_table, external.pixel_cache):
        assert path.parent == external.interim_dir
    assert declared("compare") == {
        rel(paths.reports("compare") / "leaderboard.md"),
        rel(paths.reports("compare") / "leaderboard.json"),
        rel(paths.reports("compare") / "leaderboard.png"),
        rel(paths.reports("compare") / "crossval.md"),
        rel(paths.reports("compare") / "crossval.json"),
        rel(paths.metrics("compare")),
        rel(paths.summary("compare")),
        rel(paths.metrics("external")),
    }


def test_declared_params_keys_exist(pipeline):
    # given params.yaml, then every params key a stage declares exists there, dotted keys too
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in pipeline["stages"].items():
        for key in stage_body(stage).get("params", []):
            # evaluate.external.${key}: one dataset of the (possibly empty) mapping
            key = key.removesuffix(".${key}")
            value = params
            for part in key.split("."):
                assert isinstance(value, dict) and part in value, f"{name}: {key} not in params"
                value = value[part]


def test_compare_always_refreshes(pipeline):
    # compare reads MLflow runs DVC cannot see, so it must re-run every time
    assert pipeline["stages"]["compare"]["always_changed"] is True


def test_the_external_stage_reads_only_its_own_dataset_and_runs_before_compare(pipeline):
    # given the internal evaluate stage and the per-dataset external stage
    stages = pipeline["stages"]
    # then evaluate does not read evaluate.external (a new dataset must not re-run it) ...
    assert not [key for key in stages["evaluate"]["params"] if key.startswith("evaluate.external")]
    assert "evaluate" not in stages["evaluate"]["params"]
    # ... the external stage reads its own dataset's options only ...
    external = stages["external"]["do"]["params"]
    assert "evaluate.external.${key}" in external and "evaluate.external" not in external
    # ... and compare depends on the folder of their metrics, which exists with no dataset
    assert "metrics/external" in stages["compare"]["deps"]
    assert (ROOT / "metrics" / "external" / ".gitkeep").is_file()


def test_train_starts_from_what_pretrain_wrote_and_reads_only_its_switch(pipeline):
    # given the pretrain stage, then train depends on its output and on pretrain.enabled alone
    # (a pre-training param changes train through pretrained/, which pretrain rewrites)
    stages = pipeline["stages"]
    assert "pretrained" in stages["train"]["deps"]
    assert [key for key in stages["train"]["params"] if key.startswith("pretrain")] == [
        "pretrain.enabled"
    ]
    # and pretrain runs after split, on the split tables and the pixel cache
    assert (
        list(stages).index("split") < list(stages).index("pretrain") < list(stages).index("train")
    )
    assert {"data/processed", "data/interim/pixels.npy"} <= set(stages["pretrain"]["deps"])
