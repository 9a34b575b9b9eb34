"""The cross-validated leaderboard: each model's runs on the folds of one design, pooled.

A K-fold design (split.folds = K: the same image pool, seed, grouping and split params,
cxr.splitting.splits.cross_validation_design) tests every image exactly once over its K folds.
train tags each fold's run with its design and fold (cv_design, fold), so compare, in any fold
of the design, finds the latest evaluated run of each model on each fold. A model with every
fold is scored once on its K test prediction tables joined: each image once, scored as evaluate
scores a model (bootstrap intervals over the pooled images, covid sensitivity included), with
McNemar's exact test against the best on the pooled images and the mean and standard deviation
(ddof 1) of the K per-fold figures. The ensemble row averages the top models' pooled
probabilities (cxr.comparison.ensemble). A model short of a fold is listed with the folds it
misses, and pooled once they are in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from cxr.comparison.ensemble import (
    IMAGE_KEYS,
    Ensemble,
    average_top,
    class_columns,
    ensemble_note,
    has_probabilities,
    mean_probabilities,
    score_mean,
    with_ensemble,
)
from cxr.comparison.leaderboard import (
    CROSSVAL_MD,
    MODEL_TAG,
    decision_cells,
    interval_cells,
    is_collapsed,
    mcnemar_of_tables,
    model_label,
    run_decision,
    run_predictions,
    whole_numbers,
    with_p_values,
)
from cxr.core.outputs import json_number
from cxr.core.params import (
    POOLED_PREFIX,
    RANK_METRICS,
    CompareParams,
    EvaluateParams,
    is_pooled,
)
from cxr.core.tables import FoldDesign
from cxr.tracking.runs import CV_DESIGN_TAG, ENSEMBLE_MODEL, FOLD_TAG

# The figures pooled with their intervals, and averaged over the folds.
POOLED_METRICS = ("test_accuracy", "test_f1_macro", "test_roc_auc_ovr", "test_covid_sensitivity")
ENTRY_FIGURES = (
    *POOLED_METRICS,
    *(f"{name}_ci_{end}" for name in POOLED_METRICS for end in ("low", "high")),
    "test_balanced_accuracy",
    *(f"fold_{stat}_{name}" for name in POOLED_METRICS for stat in ("mean", "std")),
    "train_seconds",
)
RUN_SEPARATOR = ","  # a pooled row's run_id: its fold runs' ids, by fold


@dataclass(frozen=True)
class CrossValidation:
    """The pooled leaderboard of one design: complete models best first, then the ensemble."""

    design: FoldDesign
    rank_by: str  # the pooled test metric it is ranked by
    board: pd.DataFrame
    incomplete: pd.DataFrame  # model, folds, missing_folds, reason
    note: str  # what the ensemble row averages, or why there is none


def pooled_metric(rank_by: str) -> str:
    """The test metric compare.rank_by ranks the pooled leaderboard by (accuracy: external)."""
    name = rank_by.removeprefix(POOLED_PREFIX)
    return name if name in RANK_METRICS else "test_accuracy"


def fold_runs(runs: pd.DataFrame, design: str) -> pd.DataFrame:
    """The latest of the evaluated `runs` (newest first) of each model on each fold of `design`."""
    tagged = runs.get(f"tags.{CV_DESIGN_TAG}")
    if tagged is None or MODEL_TAG not in runs:
        return runs.iloc[0:0].assign(fold=pd.Series(dtype=int))
    runs = runs[(tagged == design) & runs[MODEL_TAG].notna()]
    folds = runs.get(f"tags.{FOLD_TAG}", pd.Series(np.nan, runs.index))
    runs = runs.assign(fold=pd.to_numeric(folds, errors="coerce"))
    return runs.dropna(subset=["fold"]).astype({"fold": int}).drop_duplicates([MODEL_TAG, "fold"])


def pooled_row(model: str, runs: pd.DataFrame, metrics: dict[str, Any]) -> dict[str, Any]:
    """A model's row: pooled figures, per-fold mean and spread, costs and fold run ids."""

    def figures(name: str) -> pd.Series:
        column = runs.get(f"metrics.{name}")
        return pd.to_numeric(column if column is not None else pd.Series(np.nan, runs.index))

    collapsed = runs.get("tags.collapsed", pd.Series("", runs.index)).eq("true")
    decisions = runs.get("tags.decision", pd.Series(None, runs.index, object))
    return {
        "model": model,
        **{name: metrics.get(name) for name in ENTRY_FIGURES if name.startswith("test_")},
        "test_images": metrics["test_images"],
        **{f"fold_mean_{name}": figures(name).mean() for name in POOLED_METRICS},
        **{f"fold_std_{name}": figures(name).std() for name in POOLED_METRICS},
        "depth": figures("depth").mean(),
        "parameters": figures("parameters").mean(),
        "train_seconds": figures("train_seconds").sum(min_count=len(runs)),
        "inference_images_per_second": figures("inference_images_per_second").mean(),
        # folds evaluated with different evaluate.decision show them all: argmax/val_macro_f1
        "decision": "/".join(sorted({run_decision(decision) for decision in decisions})),
        "collapsed": bool(collapsed.any()),
        "collapsed_folds": tuple(int(fold) for fold in runs.loc[collapsed.to_numpy(), "fold"]),
        "run_id": RUN_SEPARATOR.join(runs["run_id"]),
    }


def pooled_label(row: pd.Series) -> str:
    """The model's name, with the folds train flagged as collapsed ('(collapsed on fold 2)')."""
    folds = row.get("collapsed_folds")
    if not isinstance(folds, tuple) or not folds:
        return model_label(row)
    named = ", ".join(map(str, folds))
    return f"{row['model']} (collapsed on fold{'s' if len(folds) > 1 else ''} {named})"


def pool_model(
    runs: pd.DataFrame, folds: int, tables: list[pd.DataFrame | None]
) -> pd.DataFrame | str:
    """A model's fold `runs`' prediction `tables` joined, or why they cannot be pooled."""
    have = list(runs["fold"])
    missing = [fold for fold in range(folds) if fold not in have]
    if missing:
        return f"missing fold(s) {', '.join(map(str, missing))}: run them to pool this model"
    unlogged = [
        fold for fold, table in zip(have, tables, strict=True) if not has_probabilities(table)
    ]
    if unlogged:
        named = ", ".join(map(str, unlogged))
        return f"fold(s) {named} logged no test probabilities (re-run their evaluate)"
    logged = [table for table in tables if table is not None]
    if len({tuple(class_columns(table)) for table in logged}) > 1:
        return "its folds predict different classes"
    joined = mean_probabilities([pd.concat(logged, ignore_index=True)])
    # In one order whatever order the folds logged their images in: the same bootstrap.
    return joined.sort_values(IMAGE_KEYS, ignore_index=True)


def cross_validate(
    runs: pd.DataFrame,
    design: FoldDesign,
    predictions: Callable[[str], pd.DataFrame | None],
    settings: CompareParams,
    scoring: EvaluateParams,
    seed: int,
) -> CrossValidation:
    """Pool each model's fold runs of `design` among the evaluated `runs` (newest first).

    `predictions(run_id)` reads a run's logged test prediction table (None: not logged).
    Each pooled table is scored as evaluate scores a model (`scoring`, `seed`).
    """
    rank_by = pooled_metric(settings.rank_by)
    rows, tables, incomplete = [], {}, []
    for model, model_runs in fold_runs(runs, design.design).groupby(MODEL_TAG, sort=True):
        model_runs = model_runs.sort_values("fold")
        joined = pool_model(
            model_runs, design.folds, [predictions(run_id) for run_id in model_runs["run_id"]]
        )
        if isinstance(joined, str):
            incomplete.append(
                {
                    "model": model,
                    "folds": [int(fold) for fold in model_runs["fold"]],
                    "missing_folds": [
                        fold for fold in range(design.folds) if fold not in set(model_runs["fold"])
                    ],
                    "reason": joined,
                }
            )
            continue
        per_image, metrics = score_mean(joined, scoring, seed)
        rows.append(pooled_row(str(model), model_runs, metrics))
        tables[rows[-1]["run_id"]] = per_image
    board = pd.DataFrame(rows, columns=None if rows else ["model", rank_by, "run_id", "collapsed"])
    board = board.sort_values(rank_by, ascending=False, na_position="last", kind="stable")
    board = board.reset_index(drop=True).assign(best=lambda frame: frame.index == 0)
    ensemble = average_top(board, settings.ensemble_size, tables.get, scoring, seed)
    if isinstance(ensemble, Ensemble):
        # Not a run of its own: its key is its name (a board's run ids are its fold runs').
        board = with_ensemble(board, ensemble, ensemble.name)
        tables[board["run_id"].iloc[-1]] = ensemble.per_image
    pairs = mcnemar_of_tables([tables.get(run_id) for run_id in board["run_id"]])
    board = with_p_values(board, pairs, settings.significance)
    missing = pd.DataFrame(incomplete, columns=["model", "folds", "missing_folds", "reason"])
    return CrossValidation(design, rank_by, board, missing, ensemble_note(ensemble))


def pooled_leaderboard(
    runs: pd.DataFrame,
    design: FoldDesign | None,
    experiment_id: str,
    settings: CompareParams,
    scoring: EvaluateParams,
    seed: int,
) -> CrossValidation | None:
    """cross_validate the fold `design` of the split tables (None: one split, no leaderboard).

    The runs' test predictions are read from their MLflow runs in `experiment_id`.
    """
    if design is None:
        return None
    predictions = partial(run_predictions, experiment_id)
    return cross_validate(runs, design, predictions, settings, scoring, seed)


def ranked_by_pooled(
    board: pd.DataFrame, crossval: CrossValidation | None, rank_by: str
) -> pd.DataFrame:
    """The single-split `board` ranked by a pooled `rank_by` (cv_...), its model's figure.

    Unchanged for any other rank_by. A model not pooled (yet) has none: it ranks last.
    """
    if not is_pooled(rank_by):
        return board
    figures = {}
    if crossval is not None:
        pooled = crossval.board[crossval.board["model"] != ENSEMBLE_MODEL]
        figures = dict(zip(pooled["model"], pooled[crossval.rank_by], strict=True))
    board = board.assign(**{rank_by: board["model"].map(figures).astype(float)})
    board = board.sort_values(rank_by, ascending=False, na_position="last", kind="stable")
    return board.reset_index(drop=True).assign(best=lambda frame: frame.index == 0)


def fold_cells(board: pd.DataFrame, name: str) -> list[str]:
    """`0.750 ± 0.061`: the mean and standard deviation of a figure over the folds."""
    cells = []
    for _, row in board.iterrows():
        mean, spread = row.get(f"fold_mean_{name}"), row.get(f"fold_std_{name}")
        cells.append("" if pd.isna(mean) else f"{mean:.3f} ± {spread:.3f}")
    return cells


def crossval_table(board: pd.DataFrame, significance: float) -> str:
    """The pooled leaderboard as a Markdown table, the best marked with a star."""

    def p_value(value: Any) -> str:
        if value is None or pd.isna(value):
            return ""
        return f"{value:.3g}{' (significant)' if value < significance else ''}"

    table = pd.DataFrame(
        {
            "model": [
                f"**{pooled_label(row)}** *" if row["best"] else pooled_label(row)
                for _, row in board.iterrows()
            ],
            "images": [str(int(value)) for value in board["test_images"]],
            "accuracy [95% CI]": interval_cells(board, "test_accuracy"),
            "macro F1 [95% CI]": interval_cells(board, "test_f1_macro"),
            "ROC AUC [95% CI]": interval_cells(board, "test_roc_auc_ovr"),
            "covid sensitivity [95% CI]": interval_cells(board, "test_covid_sensitivity"),
            "decision": decision_cells(board),
            "accuracy per fold": fold_cells(board, "test_accuracy"),
            "macro F1 per fold": fold_cells(board, "test_f1_macro"),
            "McNemar p vs best": [p_value(value) for value in board["mcnemar_p"]],
            "train s": [
                "" if pd.isna(value) else f"{value:.1f}" for value in board["train_seconds"]
            ],
            # one network's, as each fold trains the same one (the seeds' backbone table)
            "depth": whole_numbers(board, "depth"),
            "parameters": whole_numbers(board, "parameters"),
        }
    )
    return table.to_markdown(index=False, disable_numparse=True) + "\n"


def crossval_markdown(crossval: CrossValidation | None, significance: float) -> str:
    """reports/compare/crossval.md: the pooled leaderboard, its ensemble, the missing folds."""
    if crossval is None:
        return "No cross-validation: the split tables are one split (split.folds = 0).\n"
    design, board = crossval.design, crossval.board
    text = (
        f"Cross-validated leaderboard of design `{design.design}` ({design.folds} folds; this "
        f"workspace holds fold {design.fold}), ranked by pooled {crossval.rank_by} (* = best). "
        f"Each model's {design.folds} fold runs' test predictions joined, every image scored "
        "once; 95% bootstrap CIs over the pooled images; McNemar exact test vs the best on "
        f"them, significant below {significance}; per fold: mean ± standard deviation of the "
        f"{design.folds} fold figures.\n\n"
    )
    if len(board):
        text += crossval_table(board, significance) + f"\n{crossval.note}\n"
    else:
        text += "No model has been evaluated on every fold of this design yet.\n"
    if len(crossval.incomplete):
        shown = crossval.incomplete.assign(
            folds=[", ".join(map(str, folds)) for folds in crossval.incomplete["folds"]],
            missing_folds=[
                ", ".join(map(str, folds)) for folds in crossval.incomplete["missing_folds"]
            ],
        ).rename(columns={"folds": "folds evaluated", "missing_folds": "missing folds"})
        text += (
            "\nNot pooled yet (each fold is one experiment: dvc exp run -S split.fold=<k>):\n\n"
            + shown.to_markdown(index=False, disable_numparse=True)
            + "\n"
        )
    return text


def crossval_entry(row: pd.Series) -> dict[str, Any]:
    """One pooled row as strict JSON values (None, never NaN, for what was not logged)."""
    entry: dict[str, Any] = {name: json_number(row.get(name)) for name in ENTRY_FIGURES}
    note = row.get("mcnemar_note")
    entry |= {
        "test_images": int(row["test_images"]),
        "mcnemar_p_vs_best": json_number(row.get("mcnemar_p")),
        "mcnemar_p_vs_best_note": note if isinstance(note, str) else None,
        "significant": bool(row["significant"]),
    }
    if row["model"] == ENSEMBLE_MODEL:
        return entry | {"name": model_label(row), "members": list(row["members"])}
    folds = row.get("collapsed_folds")
    return entry | {
        "decision": row["decision"],
        "collapsed": is_collapsed(row),
        "collapsed_folds": list(folds) if isinstance(folds, tuple) else [],
        "run_ids": str(row["run_id"]).split(RUN_SEPARATOR),
    }


def crossval_json(crossval: CrossValidation | None) -> dict[str, Any]:
    """reports/compare/crossval.json: the design, every pooled entry, ensemble, missing folds."""
    if crossval is None:
        return {"cv_design": None, "folds": 0, "models": 0, "best_model": None}
    single = crossval.board[crossval.board["model"] != ENSEMBLE_MODEL]
    averaged = crossval.board[crossval.board["model"] == ENSEMBLE_MODEL]
    return {
        "cv_design": crossval.design.design,
        "folds": crossval.design.folds,
        "fold": crossval.design.fold,
        "rank_by": crossval.rank_by,
        "models": len(single),
        "best_model": single["model"].iloc[0] if len(single) else None,
        "leaderboard": {row["model"]: crossval_entry(row) for _, row in single.iterrows()},
        "ensemble": crossval_entry(averaged.iloc[0]) if len(averaged) else None,
        "ensemble_note": crossval.note,
        "incomplete": crossval.incomplete.to_dict(orient="records"),
    }


def crossval_metrics(crossval: CrossValidation | None) -> dict[str, Any]:
    """The pooled leaderboard's headline, scalars only (None: no design or no model)."""
    report = crossval_json(crossval)
    best = report.get("leaderboard", {}).get(report["best_model"] or "", {})
    ensemble = report.get("ensemble") or {}
    return {
        "cv_design": report["cv_design"],
        "cv_models_pooled": report["models"],
        "cv_best_model": report["best_model"],
        "cv_best_test_accuracy": best.get("test_accuracy"),
        "cv_best_test_f1_macro": best.get("test_f1_macro"),
        "cv_ensemble_test_accuracy": ensemble.get("test_accuracy"),
    }


def crossval_line(report: dict[str, Any]) -> str:
    """The line compare prints about a crossval_json `report` ('' without a design)."""
    if report["cv_design"] is None:
        return ""
    line = f"compare: cross-validation design {report['cv_design']} ({report['folds']} folds): "
    if report["best_model"] is not None:
        name = report["rank_by"]
        best = report["leaderboard"][report["best_model"]]
        low, high = best[f"{name}_ci_low"], best[f"{name}_ci_high"]
        interval = "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"
        line += (
            f"{report['models']} model(s) pooled, best {report['best_model']} at {name} "
            f"{best[name]:.3f}{interval} on {best['test_images']} images"
        )
    else:
        line += "no model on every fold yet"
    waiting = [
        f"{row['model']} (missing fold(s) {', '.join(map(str, row['missing_folds']))})"
        if row["missing_folds"]
        else f"{row['model']} ({row['reason']})"
        for row in report["incomplete"]
    ]
    return line + (f"; not pooled: {'; '.join(waiting)}" if waiting else "") + f" -> {CROSSVAL_MD}"
