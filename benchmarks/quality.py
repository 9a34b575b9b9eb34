"""Benchmark what the pipeline learns on real data: a sweep through DVC's queue, as users run it.

    .venv/bin/python benchmarks/quality.py [--models compact_cnn pixel_logreg] [--minutes 20]
        [--datasets covid19-dataset covid-ct-cropped] [--set KEY=VALUE ...] [--seeds 42 7 1]
        [--folds 5] [--jobs 1] [--sweep KEY=V1,V2 ...] [--rescore 'KEY=VALUE ...' ...]

For each dataset under ../shared/datasets (skipped with a line when absent), a copy of this
checkout in a temporary git repository (tests/dvc_project.py: code, dvc.yaml, params.yaml with
data.source, the dataset's options, train.time_budget_minutes = --minutes and every --set) runs
one sweep, README's main workflow (each experiment runs the whole pipeline in its own copy):

    dvc exp run --queue -S 'model=<models>' [-S 'seed=<seeds>']
        [-S split.folds=K -S 'split.fold=range(0,K)'] [-S KEY=V1,V2 ...]
    dvc queue start -j <jobs>

--sweep KEY=V1,V2 (a train.* or pretrain.* param) measures a lever: each value is a recipe of its
own, and compare.by = [KEY, ...] ranks each model's recipes as rows of their own (pooled per
recipe with --folds), with McNemar p between them on the same images.

When the queue is done, compare runs once more on one experiment of each seed (`dvc exp apply`,
`dvc repro compare`: every other stage is up to date), so it sees every run, and the script
prints what compare wrote: with --folds, the cross-validated leaderboard of the datasets split
afresh (reports/compare/crossval.md: every model scored once on all folds' test images pooled,
with its ensemble row and McNemar p against the best), else the leaderboard of the one split
(leaderboard.md). covid19-dataset keeps its given test folder (less copies of train images), so
--folds does not apply to it; covid-ct-cropped is split with data.group_pattern, so no paper's
slices straddle the splits. Seed ensembles and test-time augmentation are params:
--set train.members=3, --set evaluate.tta=true. Prints tables; never fails on figures.

--rescore 'KEY=VALUE ...' (evaluate's params only, e.g. evaluate.tta=true) scores the same
trained models another way: after the first tables, each experiment is applied and its evaluate
run again with the new values (`dvc exp run -S KEY=VALUE evaluate`: train is up to date, so the
models are not retrained; evaluate re-logs its figures in the model's MLflow run), then compare
prints the tables again. Each --rescore is a pass of its own from the trained models: one sweep
of training gives every row.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from dvc_project import (  # noqa: E402
    DVC,
    clean_env,
    copy_project,
    failed_tasks,
    git_repo,
    kill_processes_in,
    queue_logs,
    run,
    wait_for_tasks,
)

SHARED = REPO.parent / "shared" / "datasets"
# The paper before -p<page>-<figure>, the figure before %<crop> (docs/real-data.md).
CT_GROUP_PATTERN = r"([^/]+?)(?:-p\d+-[^/]*|_\d+[^/]*|%\d+)?\.\w+$"
DATASETS: dict[str, dict[str, Any]] = {
    "covid19-dataset": {},
    "covid-ct-cropped": {"data.group_pattern": CT_GROUP_PATTERN},
}
# Split afresh (no given test folder): the datasets --folds deals into folds.
FRESH_SPLIT = ("covid-ct-cropped",)
# Long enough for any sweep of the shared datasets on 2 cores: the script waits, DVC runs.
DAY = 24 * 3600.0


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """Set `train.image_size`-style dotted keys in a params mapping."""
    *parents, leaf = key.split(".")
    section = params
    for parent in parents:
        section = section.setdefault(parent, {})
    section[leaf] = value


def project_params(source: Path, options: dict[str, Any], args: argparse.Namespace) -> Any:
    """The repository's params.yaml with the dataset, its options, the budget and every --set."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    overrides = {"data.source": str(source), **options, "train.time_budget_minutes": args.minutes}
    overrides |= {key: yaml.safe_load(value) for key, value in (s.split("=", 1) for s in args.set)}
    if args.sweep:
        overrides["compare.by"] = [value.split("=", 1)[0] for value in args.sweep]
    for key, value in overrides.items():
        set_dotted(params, key, value)
    return params


def sweep_args(args: argparse.Namespace, folds: int) -> list[str]:
    """The -S overrides of the sweep: the models, the seeds, every fold of a K-fold design."""
    overrides = [f"model={','.join(args.models)}"]
    if args.seeds:
        overrides.append(f"seed={','.join(map(str, args.seeds))}")
    if folds:
        overrides += [f"split.folds={folds}", f"split.fold=range(0,{folds})"]
    overrides += args.sweep
    return [part for override in overrides for part in ("-S", override)]


def queued_seeds(output: str) -> dict[str, str]:
    """One experiment per seed (or `all` without --seeds) from `dvc exp run --queue`'s output."""
    experiments = re.findall(
        r"Queueing with overrides '(.*?)'\.\s+Queued experiment '([\w-]+)'", output
    )
    chosen: dict[str, str] = {}
    for overrides, name in experiments:
        seed = re.search(r"'seed=(\d+)'", overrides)
        chosen.setdefault(seed.group(1) if seed else "all", name)
    return chosen


def queued_names(output: str) -> list[str]:
    """Every experiment `dvc exp run --queue` queued, in its order."""
    return re.findall(r"Queued experiment '([\w-]+)'", output)


def compare_tables(
    name: str, chosen: dict[str, str], report: str, repo: Path, env: dict[str, str], how: str
) -> list[tuple[str, str]]:
    """The tables compare writes, run once more on one experiment of each seed, by label."""
    tables = []
    for seed, experiment in chosen.items():
        run([*DVC, "exp", "apply", experiment], repo, env)
        run([*DVC, "repro", "compare"], repo, env, timeout=DAY)
        markdown = (repo / "reports" / "compare" / report).read_text(encoding="utf-8")
        label = (name if seed == "all" else f"{name}, seed {seed}") + how
        print(f"\n## {label}\n\n{markdown}", flush=True)  # a long run's finished part
        tables.append((label, markdown))
    return tables


def rescore(
    name: str, queued: list[str], rescored: list[str], repo: Path, env: dict[str, str]
) -> dict[str, str]:
    """Evaluate every `queued` experiment's models again with the `rescored` KEY=VALUEs.

    Returns the experiment each rescoring made, by the queued experiment it started from.
    """
    started = time.monotonic()
    overrides = [part for value in rescored for part in ("-S", value)]
    made = {}
    for experiment in queued:
        run([*DVC, "exp", "apply", experiment], repo, env)
        output = run([*DVC, "exp", "run", *overrides, "evaluate"], repo, env, timeout=DAY)
        found = re.search(r"Ran experiment\(s\): ([\w-]+)", output)
        if found is None:
            raise SystemExit(f"{name}: rescoring {experiment} made no experiment:\n{output}")
        made[experiment] = found.group(1)
    minutes = (time.monotonic() - started) / 60
    print(f"{name}: {len(queued)} experiments rescored ({' '.join(rescored)}) in {minutes:.1f} min")
    return made


def sweep(name: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    """Run one dataset's sweep through DVC; (label, compare's Markdown) per seed."""
    source = SHARED / name
    if not source.is_dir():
        print(f"skip {name}: {source} not found")
        return []
    folds = args.folds if name in FRESH_SPLIT else 0
    if args.folds and not folds:
        print(f"{name}: its given test folder is kept, so --folds does not apply")
    report = "crossval.md" if folds else "leaderboard.md"
    with tempfile.TemporaryDirectory(prefix=f"cxr-quality-{name}-") as scratch:
        repo = Path(scratch) / "project"
        copy_project(repo, project_params(source, DATASETS[name], args))
        env = clean_env()
        git_repo(repo, env)
        started = time.monotonic()
        queued = run([*DVC, "exp", "run", "--queue", *sweep_args(args, folds)], repo, env)
        chosen = queued_seeds(queued)
        count = queued.count("Queued experiment")
        print(f"{name}: {count} experiments queued, {args.jobs} at a time ...", flush=True)
        try:
            run([*DVC, "queue", "start", "-j", str(args.jobs)], repo, env)
            status = wait_for_tasks(repo, env, count, timeout=DAY, interval=30)
        finally:
            kill_processes_in(Path(scratch))  # idle queue workers
        failed = failed_tasks(status)
        if failed:
            print(
                f"{name}: {len(failed)} of {count} experiments failed:\n{queue_logs(repo, failed)}"
            )
        print(f"{name}: the sweep took {(time.monotonic() - started) / 60:.1f} min", flush=True)
        tables = compare_tables(name, chosen, report, repo, env, "")
        for rescored in [] if failed else args.rescore:
            values = rescored.split()
            made = rescore(name, queued_names(queued), values, repo, env)
            again = {seed: made[experiment] for seed, experiment in chosen.items()}
            tables += compare_tables(
                name, again, report, repo, env, f", rescored with {' '.join(values)}"
            )
        return tables


def main(argv: list[str] | None = None) -> int:
    """Run every dataset's sweep and print compare's tables together at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["compact_cnn", "pixel_logreg"])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="K-fold cross-validation of the datasets split afresh: split.folds = K, one "
        "experiment per fold and model, the pooled leaderboard printed",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[],
        help="sweep params `seed` too (the split, init and augmentation): one leaderboard per "
        "seed; default: params.yaml's seed",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="experiments at once (dvc queue start -j)"
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="sweep a train.* or pretrain.* param too (train.members=1,3): each value a recipe, "
        "ranked as its own row (compare.by)",
    )
    parser.add_argument(
        "--rescore",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="evaluate params (evaluate.tta=true): after the sweep, evaluate every "
        "experiment's trained models again with them and print compare's tables again; each "
        "--rescore is a pass of its own, from the trained models",
    )
    args = parser.parse_args(argv)
    tables = [table for name in args.datasets for table in sweep(name, args)]
    print(f"\nbudget {args.minutes:g} min per model, --set {' '.join(args.set) or '(none)'}")
    for label, markdown in tables:
        print(f"\n## {label}\n\n{markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
