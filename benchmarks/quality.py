"""Benchmark what the pipeline learns on real data: the default recipe against pixel_logreg.

    .venv/bin/python benchmarks/quality.py [--models compact_cnn pixel_logreg] [--minutes 20]
        [--datasets covid19-dataset covid-ct-cropped] [--set KEY=VALUE ...] [--seeds 42 7]
        [--folds 5] [--members 3] [--tta]

For each dataset under ../shared/datasets (skipped with a line when absent), a temporary project
runs the real stages (`python3 -m stages.<name>`): ingest, build and split once, then train and
evaluate per model with the repository's params.yaml (the default recipe) and
train.time_budget_minutes = --minutes, then compare (the leaderboard, with its ensemble row).
covid19-dataset keeps its given test folder (less the copies of train images);
covid-ct-cropped is split afresh with data.group_pattern, so no paper's slices straddle splits.
Prints accuracy, macro F1 and ROC AUC with 95% bootstrap CIs, McNemar's exact p against
pixel_logreg on the same test images, and the training time. With --tta each CNN is scored again
with evaluate.tta (a `<model>+tta` row; the ensemble then averages those TTA probabilities).
With --seeds each dataset runs once per seed: a fresh split (group-aware for the CT slices),
weight initialisation and augmentation each time, which on a few hundred images moves the
figures by more than their intervals suggest. With --members N each CNN is trained N times on
the same split, member k with params `seed` + 100 k after the split (another initialisation,
augmentation and batch order; member 0 is the plain run), and a `<model> x N` row scores the
mean of their probabilities (a seed ensemble of one backbone). With --folds K the datasets split
afresh (covid-ct-cropped) are cross-validated: split.folds = K and each fold the test split once
(groups whole), a row per fold, and rows scoring every model once on all folds' test images
together, so each image is tested exactly once and the interval and McNemar p cover the whole
collection. Prints figures; never fails on them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.comparison.ensemble import mean_probabilities, score_mean  # noqa: E402
from cxr.comparison.leaderboard import paired_mcnemar  # noqa: E402
from cxr.core.params import member_seed, parse_params  # noqa: E402
from cxr.core.registry import is_baseline  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
# The paper before -p<page>-<figure>, the figure before %<crop> (README, Real data).
CT_GROUP_PATTERN = r"([^/]+?)(?:-p\d+-[^/]*|_\d+[^/]*|%\d+)?\.\w+$"
DATASETS: dict[str, dict[str, Any]] = {
    "covid19-dataset": {},
    "covid-ct-cropped": {"data.group_pattern": CT_GROUP_PATTERN},
}
BASELINE = "pixel_logreg"
# Split afresh (no given test folder): the datasets --folds deals into folds.
FRESH_SPLIT = ("covid-ct-cropped",)


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """Set `train.image_size`-style dotted keys in a params mapping."""
    *parents, leaf = key.split(".")
    section = params
    for parent in parents:
        section = section[parent]
    section[leaf] = value


def run_stage(stage: str, root: Path) -> None:
    """Run one stage as DVC would, on the project at `root`."""
    subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", "--root", str(root)], cwd=REPO, check=True
    )


def write_params(root: Path, params: dict[str, Any]) -> None:
    """Write params.yaml of the project at `root`."""
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def evaluate_model(root: Path, params: dict[str, Any], model: str, out: Path) -> dict[str, Any]:
    """Train and evaluate `model`; keep its metrics and per-image predictions in `out`."""
    params["model"] = model
    write_params(root, params)
    run_stage("train", root)
    run_stage("evaluate", root)
    return keep_results(root, out)


def keep_results(root: Path, out: Path) -> dict[str, Any]:
    """Copy the last train and evaluate metrics and predictions into `out`; return them."""
    out.mkdir(parents=True, exist_ok=True)
    summary = root / "metrics" / "summary"
    for source in (summary / "train.json", summary / "evaluate.json"):
        shutil.copy2(source, out / source.name)
    shutil.copy2(root / "metrics" / "test_predictions.csv", out / "test_predictions.csv")
    metrics = json.loads((out / "evaluate.json").read_text())
    metrics["train_seconds"] = json.loads((out / "train.json").read_text())["train_seconds"]
    metrics["epochs_run"] = json.loads((out / "train.json").read_text())["epochs_run"]
    return metrics


def cell(metrics: dict[str, Any], name: str) -> str:
    """`0.850 [0.760, 0.920]`, or the value alone without an interval."""
    value = metrics.get(name)
    if value is None:
        return "-"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{value:.3f}" if low is None or high is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def table_row(
    label: str, model: str, metrics: dict[str, Any], p: float | None, cost: bool = True
) -> str:
    """One Markdown row: figures with CIs, McNemar p, and epochs and train seconds when `cost`."""
    spent = f"{metrics['epochs_run']} | {metrics['train_seconds']:.0f}" if cost else "- | -"
    return (
        f"| {label} | {model} | {cell(metrics, 'test_accuracy')} | "
        f"{cell(metrics, 'test_f1_macro')} | {cell(metrics, 'test_roc_auc_ovr')} | "
        f"{'-' if p is None else f'{p:.3g}'} | {spent} |"
    )


def seed_ensemble(
    model: str,
    members: int,
    root: Path,
    params: dict[str, Any],
    results: dict[str, Any],
    out: Path,
) -> None:
    """Train `model` `members` times on the split already made; add each member and their mean.

    Member k trains with params `seed` = member_seed(seed, k), as train.members does (the split
    stays the one `seed` made); the mean row `<model> x N` sums the members' epochs and seconds.
    """
    split_seed = int(params["seed"])
    names = []
    for k in range(members):
        params["seed"] = member_seed(split_seed, k)
        name = model if k == 0 else f"{model}, init {params['seed']}"
        results[name] = evaluate_model(root, params, model, out / name)
        names.append(name)
    params["seed"] = split_seed
    write_params(root, params)
    tables = [pd.read_csv(out / name / "test_predictions.csv") for name in names]
    per_image, metrics = score_mean(
        mean_probabilities(tables), parse_params(params).evaluate, split_seed
    )
    mean_out = out / f"{model} x {members}"
    mean_out.mkdir(parents=True)
    per_image.to_csv(mean_out / "test_predictions.csv", index=False)
    metrics["epochs_run"] = sum(results[name]["epochs_run"] for name in names)
    metrics["train_seconds"] = sum(results[name]["train_seconds"] for name in names)
    results[f"{model} x {members}"] = metrics


def ensemble_row(
    name: str, ensemble: dict[str, Any], tables: dict[str, pd.DataFrame], params: dict[str, Any]
) -> str:
    """The leaderboard's ensemble as a table row, with its McNemar p against the baseline."""
    members = ensemble["members"]
    if all(member in tables for member in members):
        joined = mean_probabilities([tables[member] for member in members])
        per_image, _ = score_mean(joined, parse_params(params).evaluate, int(params["seed"]))
        p = paired_mcnemar(tables.get(BASELINE), per_image)
    else:
        p = None
    return table_row(name, f"ensemble ({' + '.join(members)})", ensemble, p, cost=False)


def train_models(
    root: Path, params: dict[str, Any], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """Train and evaluate every --models on the split made at `root`; results kept under `out`."""
    results: dict[str, Any] = {}
    for model in args.models:
        if args.members > 1 and not is_baseline(model):
            seed_ensemble(model, args.members, root, params, results, out)
            continue
        results[model] = evaluate_model(root, params, model, out / model)
        if args.tta and not is_baseline(model):
            # The same trained model scored again with test-time augmentation.
            params["evaluate"]["tta"] = True
            write_params(root, params)
            run_stage("evaluate", root)
            params["evaluate"]["tta"] = False
            write_params(root, params)
            results[f"{model}+tta"] = keep_results(root, out / f"{model}+tta")
    return results


def result_rows(label: str, results: dict[str, Any], tables: dict[str, pd.DataFrame]) -> list[str]:
    """One table row per model: its figures and McNemar p against the baseline."""
    baseline = tables.get(BASELINE)
    return [
        table_row(
            label,
            model,
            metrics,
            None if model == BASELINE else paired_mcnemar(baseline, tables[model]),
        )
        for model, metrics in results.items()
    ]


def one_split(
    root: Path, params: dict[str, Any], args: argparse.Namespace, label: str, out: Path
) -> tuple[list[str], dict[str, Any]]:
    """Split, train and evaluate every model, then compare; the rows and the results."""
    run_stage("split", root)
    split = json.loads((root / "metrics" / "summary" / "split.json").read_text())
    print(f"{label}: " + ", ".join(f"{s} {split[s]['images']}" for s in ("train", "val", "test")))
    results = train_models(root, params, args, out)
    run_stage("compare", root)
    report = json.loads((root / "reports" / "compare" / "leaderboard.json").read_text())
    tables = {m: pd.read_csv(out / m / "test_predictions.csv") for m in results}
    rows = result_rows(label, results, tables)
    ensemble = report.get("ensemble")
    if ensemble:
        rows.append(ensemble_row(label, ensemble, tables, params))
    return rows, results


def pooled_rows(
    label: str, folds: list[Path], results: list[dict[str, Any]], params: dict[str, Any]
) -> list[str]:
    """Every model scored once on all folds' test images together, with a pooled ensemble row.

    Each image is tested in exactly one fold, so the pooled table holds every image once: one
    accuracy, interval and McNemar p over the whole collection instead of one per fold. The
    ensemble averages the compare.ensemble_size models with the best pooled rank_by figure.
    """
    scoring, seed = parse_params(params).evaluate, int(params["seed"])
    tables, pooled = {}, {}
    for model in results[0]:
        joined = pd.concat(
            [pd.read_csv(fold / model / "test_predictions.csv") for fold in folds],
            ignore_index=True,
        )
        tables[model], pooled[model] = score_mean(mean_probabilities([joined]), scoring, seed)
        pooled[model]["epochs_run"] = sum(fold[model]["epochs_run"] for fold in results)
        pooled[model]["train_seconds"] = sum(fold[model]["train_seconds"] for fold in results)
    rows = result_rows(label, pooled, tables)
    size = int(params["compare"]["ensemble_size"])
    rank_by = str(params["compare"]["rank_by"])
    single = [model for model in pooled if "+tta" not in model]
    top = sorted(single, key=lambda model: -pooled[model].get(rank_by, 0.0))[:size]
    if size >= 2 and len(top) >= 2:
        per_image, metrics = score_mean(
            mean_probabilities([tables[model] for model in top]), scoring, seed
        )
        p = paired_mcnemar(tables.get(BASELINE), per_image)
        rows.append(table_row(label, f"ensemble ({' + '.join(top)})", metrics, p, cost=False))
    return rows


def benchmark(
    name: str, options: dict[str, Any], args: argparse.Namespace, label: str
) -> list[str]:
    """Run one dataset through the stages; return its Markdown table rows (data cell `label`)."""
    source = SHARED / name
    if not source.is_dir():
        print(f"skip {name}: {source} not found")
        return []
    with tempfile.TemporaryDirectory(prefix=f"cxr-quality-{name}-") as scratch:
        root = Path(scratch) / "project"
        root.mkdir()
        params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        overrides = {
            "data.source": str(source),
            **options,
            "train.time_budget_minutes": args.minutes,
        }
        overrides |= {
            key: yaml.safe_load(value) for key, value in (s.split("=", 1) for s in args.set)
        }
        for key, value in overrides.items():
            set_dotted(params, key, value)
        write_params(root, params)
        for stage in ("ingest", "build"):
            run_stage(stage, root)
        folds = args.folds if name in FRESH_SPLIT else 0
        if args.folds and not folds:
            print(f"{name}: its given test folder is kept, so --folds does not apply")
        if not folds:
            return one_split(root, params, args, label, root / "results")[0]
        rows, outs, results = [], [], []
        for fold in range(folds):
            set_dotted(params, "split.folds", folds)
            set_dotted(params, "split.fold", fold)
            write_params(root, params)
            outs.append(root / "results" / f"fold {fold}")
            fold_rows, fold_results = one_split(
                root, params, args, f"{label}, fold {fold}", outs[-1]
            )
            print("\n".join(["fold rows:", *fold_rows]), flush=True)
            rows += fold_rows
            results.append(fold_results)
        return rows + pooled_rows(f"{label}, {folds} folds pooled", outs, results, params)


def main(argv: list[str] | None = None) -> int:
    """Run every dataset and print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[BASELINE, "compact_cnn"])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tta", action="store_true", help="also score each CNN with evaluate.tta")
    parser.add_argument(
        "--members",
        type=int,
        default=1,
        help="train each CNN this many times on one split (init seeds seed + 100 k) and score "
        "the mean of their probabilities",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="K-fold cross-validation of the datasets split afresh (split.folds = K, each fold "
        "the test split once): rows per fold and rows over all folds' test images pooled",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[],
        help="run each dataset once per seed (params `seed`: the split, init and augmentation); "
        "default: params.yaml's seed",
    )
    args = parser.parse_args(argv)
    runs = [
        (name, DATASETS[name] | ({"seed": seed} if seed is not None else {}), label)
        for name in args.datasets
        for seed, label in (
            [(seed, f"{name}, seed {seed}") for seed in args.seeds] or [(None, name)]
        )
    ]
    rows = []
    for name, options, label in runs:
        done = benchmark(name, options, args, label)
        print("\n".join(["rows so far:", *done]), flush=True)  # a long run's finished part
        rows += done
    print(f"\nbudget {args.minutes:g} min per model, 2 CPU cores, no ImageNet weights")
    print(
        "| data | model | accuracy [95% CI] | macro F1 [95% CI] | ROC AUC [95% CI] "
        f"| McNemar p vs {BASELINE} | epochs | train s |"
    )
    print("|---|---|---|---|---|---|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
