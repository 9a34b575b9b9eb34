"""The leaderboard: every model evaluated on the current data, read from MLflow and ranked.

Runs logged before the `backbone` tag was renamed `model` still count: their model is read
from the old tag. The ensemble row (cxr/comparison/ensemble.py) is added last, never ranked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr.core.outputs import json_number
from cxr.core.params import CompareParams, external_metric
from cxr.core.tables import FoldDesign
from cxr.evaluation.metrics import ARGMAX
from cxr.evaluation.statistics import INTERVAL_METRICS, mcnemar_exact
from cxr.tracking.runs import (
    CV_DESIGN_TAG,
    ENSEMBLE_MODEL,
    LEADERBOARD_MODEL,
    PREDICTIONS_ARTIFACT,
    find_run,
    tag_run,
)

MODEL_TAG = "tags.model"
LEGACY_MODEL_TAG = "tags.backbone"  # what runs logged before the rename call the model
METRICS = (
    *INTERVAL_METRICS,
    *(f"{name}_ci_{end}" for name in INTERVAL_METRICS for end in ("low", "high")),
    "test_balanced_accuracy",
    "test_covid_sensitivity",
    "depth",
    "parameters",
    "train_seconds",
    "epochs_run",
    "inference_images_per_second",
)
LEADERBOARD_COLUMNS = {
    MODEL_TAG: "model",
    **{f"metrics.{name}": name for name in METRICS},
    "tags.pretrained": "pretrained",
    # How the backbone started: random, pretrained (ImageNet or a file) or self_supervised (the
    # pretrain stage); runs logged before the tag have only `pretrained`.
    "tags.backbone_init": "backbone_init",
    # What train.optimizer (auto: per backbone, cxr.core.registry) came to; none for a baseline.
    "tags.optimizer": "optimizer",
    # The Keras backend train ran on (cxr.models.backend); none for a scikit-learn baseline.
    "tags.keras_backend": "backend",
    # train's collapse check (cxr.training.collapse): a collapsed model is never champion.
    "tags.collapsed": "collapsed",
    "tags.collapse_reason": "collapse_reason",
    # How evaluate called covid (evaluate.decision); runs evaluated before the tag used argmax.
    "tags.decision": "decision",
    "run_id": "run_id",
    "start_time": "started",
}
EXCLUDED_COLUMNS = ("model", "data_fingerprint", "run_id", "reason")
# Where compare writes the cross-validated leaderboard, in reports/compare/.
CROSSVAL_MD = "crossval.md"
CROSSVAL_REPORT = "crossval.json"
# Why a row has no McNemar p-value against the best model (None in the p column).
BEST_ITSELF = "the best model itself"
# Per external dataset (evaluate.external.<name>): what evaluate logged as external_<name>_<key>.
EXTERNAL_METRICS = (
    *(
        f"{name}{end}"
        for name in ("accuracy", "f1_macro", "roc_auc_ovr")
        for end in ("", "_ci_low", "_ci_high")
    ),
    "balanced_accuracy",
    "covid_sensitivity",
    "accuracy_drop",
    "source_shortcut_accuracy",
    "source_shortcut_accuracy_ci_low",
    "source_shortcut_accuracy_ci_high",
)


def external_columns(external: Sequence[str]) -> dict[str, str]:
    """The run columns of the external datasets' metrics and their leaderboard names."""
    return {
        f"metrics.{external_metric(name, key)}": external_metric(name, key)
        for name in external
        for key in EXTERNAL_METRICS
    }


def with_model_tag(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with tags.model set from tags.backbone where a run has no model tag."""
    model = runs[MODEL_TAG] if MODEL_TAG in runs else pd.Series(None, runs.index, object)
    if LEGACY_MODEL_TAG in runs:
        model = model.where(model.notna(), runs[LEGACY_MODEL_TAG])
    return runs.assign(**{MODEL_TAG: model})


def recipe_label(model: str, params: Mapping[str, Any], by: Sequence[str]) -> str:
    """`compact_cnn[train.members=3]`: a model and the values its run logged of the `by` params.

    The model alone without `by`; `?` for a param the run did not log (one from before it).
    """
    if not by:
        return model
    values = [params.get(key) for key in by]
    shown = [value if isinstance(value, str) else "?" for value in values]
    return f"{model}[{','.join(f'{key}={value}' for key, value in zip(by, shown, strict=True))}]"


def with_recipes(runs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """`runs` with each model tag made its recipe_label, so the boards rank recipes (compare.by)."""
    if not by or runs.empty or MODEL_TAG not in runs:
        return runs
    labels = [
        recipe_label(model, {key: row.get(f"params.{key}") for key in by}, by)
        if isinstance(model, str)
        else model
        for model, (_, row) in zip(runs[MODEL_TAG], runs.iterrows(), strict=True)
    ]
    return runs.assign(**{MODEL_TAG: labels})


def evaluated_runs(experiment_id: str) -> pd.DataFrame:
    """Finished runs of the experiment that the evaluate stage scored, newest first.

    compare's own ensemble runs are left out: they are not models to rank.
    """
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    if runs.empty or "metrics.test_accuracy" not in runs:
        return pd.DataFrame(columns=["run_id", MODEL_TAG, "tags.data_fingerprint"])
    runs = with_model_tag(runs.dropna(subset=["metrics.test_accuracy"]))
    return runs[runs[MODEL_TAG] != ENSEMBLE_MODEL]


def leaderboard(
    runs: pd.DataFrame, fingerprint: str, rank_by: str, external: Sequence[str] = ()
) -> pd.DataFrame:
    """The latest of the evaluated `runs` of each model on data `fingerprint`, best first.

    With the metrics of the `external` datasets as columns (blank for a run not scored on one).
    """
    # A run without a data_fingerprint tag was not scored on data anyone can name: never ranked
    # (excluded_runs lists it), also when no run of the experiment has the tag at all.
    tagged = runs.get("tags.data_fingerprint")
    runs = runs[tagged == fingerprint] if tagged is not None else runs.iloc[0:0]
    runs = runs[runs[MODEL_TAG].notna()] if MODEL_TAG in runs else runs.iloc[0:0]
    columns = LEADERBOARD_COLUMNS | external_columns(external)
    runs = runs.reindex(columns=list(columns)).rename(columns=columns)
    board = runs.drop_duplicates("model").sort_values(
        rank_by, ascending=False, na_position="last", kind="stable"
    )
    board = board.reset_index(drop=True)
    board["parameters"] = pd.to_numeric(board["parameters"]).round().astype("Int64")
    # Runs logged before the collapse check carry no tag: not known to be collapsed.
    board["collapsed"] = board["collapsed"].eq("true")
    board["best"] = board.index == 0
    return board


def excluded_runs(
    runs: pd.DataFrame, fingerprint: str, design: FoldDesign | None = None
) -> pd.DataFrame:
    """Evaluated `runs` on other data (latest per model and data), with why they are left out.

    A fold of a cross-validation design says so: of the current `design` (pooled in the
    cross-validated leaderboard, cxr.comparison.crossval), or of another one.
    """
    if runs.empty:
        return pd.DataFrame(columns=list(EXCLUDED_COLUMNS))
    tags = [MODEL_TAG, "tags.data_fingerprint", "run_id", f"tags.{CV_DESIGN_TAG}", "tags.fold"]
    other = runs.reindex(columns=tags)
    other.columns = ["model", "data_fingerprint", "run_id", "cv_design", "fold"]
    other = other[other["data_fingerprint"] != fingerprint]
    other = other.drop_duplicates(["model", "data_fingerprint"]).reset_index(drop=True)
    other["reason"] = [exclusion_reason(row, fingerprint, design) for _, row in other.iterrows()]
    return other[list(EXCLUDED_COLUMNS)]


def exclusion_reason(row: pd.Series, fingerprint: str, design: FoldDesign | None) -> str:
    """Why an excluded_runs row is not on the leaderboard of `fingerprint` (and `design`)."""
    value, run_design = row["data_fingerprint"], row["cv_design"]
    if not isinstance(value, str) or not value:
        return "no data_fingerprint tag: data unknown"
    if isinstance(run_design, str) and run_design:
        if design is not None and run_design == design.design:
            return f"fold {row['fold']} of this cross-validation design: pooled in {CROSSVAL_MD}"
        return f"other data: fold {row['fold']} of cross-validation design {run_design}"
    return f"other data: fingerprint {value} is not the current {fingerprint}"


def run_predictions(experiment_id: str, run_id: str) -> pd.DataFrame | None:
    """The per-image test predictions evaluate logged in a run, or None when absent."""
    try:
        return MlflowClient().load_table(experiment_id, PREDICTIONS_ARTIFACT, run_ids=[run_id])
    except MlflowException:
        return None


def correctness_by_image(table: pd.DataFrame) -> pd.Series:
    """Whether each test image was classified right, indexed by its path and content hash.

    A run evaluated twice before evaluate cleared its earlier results (older runs) holds its
    table twice, since MLflow appends: the latest rows count.
    """
    keys = [column for column in ("path", "sha256") if column in table]
    right = table["actual"] == table["predicted"]
    return (
        pd.Series(right.to_numpy(), index=pd.MultiIndex.from_frame(table[keys]))
        .groupby(level=list(range(len(keys))))
        .last()
    )


def mcnemar_vs_best(experiment_id: str, board: pd.DataFrame) -> list[float | None]:
    """Exact McNemar p-value of each model against the best one on their shared test images."""
    return [p for p, _ in mcnemar_with_notes(experiment_id, board)]


def mcnemar_with_notes(
    experiment_id: str, board: pd.DataFrame
) -> list[tuple[float | None, str | None]]:
    """Per row (McNemar p against the best, None), or (None, why there is no p-value)."""
    tables = {run_id: run_predictions(experiment_id, run_id) for run_id in board["run_id"]}
    return mcnemar_of_tables([tables[run_id] for run_id in board["run_id"]])


def mcnemar_of_tables(
    tables: Sequence[pd.DataFrame | None],
) -> list[tuple[float | None, str | None]]:
    """mcnemar_with_notes of rows whose prediction tables (None: not logged) are `tables`."""
    if not tables:
        return []
    best = tables[0]
    pairs: list[tuple[float | None, str | None]] = [(None, BEST_ITSELF)]
    for other in tables[1:]:
        p = paired_mcnemar(best, other)
        if p is not None:
            pairs.append((p, None))
        elif best is None or other is None:
            whose = "the best model" if best is None else "this model"
            pairs.append((None, f"no test predictions logged by {whose} (re-run its evaluate)"))
        else:
            pairs.append((None, "no test image shared with the best model"))
    return pairs


def paired_mcnemar(first: pd.DataFrame | None, second: pd.DataFrame | None) -> float | None:
    """Exact McNemar p of two prediction tables on the test images both hold (None: no pair)."""
    if first is None or second is None:
        return None
    pair = pd.concat(
        [correctness_by_image(first), correctness_by_image(second)], axis=1, join="inner"
    )
    return mcnemar_exact(pair.iloc[:, 0], pair.iloc[:, 1]) if len(pair) else None


def with_mcnemar(board: pd.DataFrame, experiment_id: str, significance: float) -> pd.DataFrame:
    """`board` with each model's McNemar p-value against the best and whether it is significant.

    `mcnemar_note` says why a row has none (the best model itself, no paired predictions).
    """
    return with_p_values(board, mcnemar_with_notes(experiment_id, board), significance)


def with_p_values(
    board: pd.DataFrame, pairs: Sequence[tuple[float | None, str | None]], significance: float
) -> pd.DataFrame:
    """`board` with the (p, note) `pairs` of mcnemar_with_notes as columns, and significance."""
    board = board.copy()
    # object columns: a float column would turn a missing p into NaN, which JSON cannot hold.
    board["mcnemar_p"] = pd.Series([p for p, _ in pairs], index=board.index, dtype=object)
    board["mcnemar_note"] = pd.Series([note for _, note in pairs], index=board.index, dtype=object)
    board["significant"] = [p is not None and p < significance for p, _ in pairs]
    return board


def ensemble_name(members: Sequence[str], separator: str = "") -> str:
    """ensemble(<model>+<model>+...): the ensemble row's label, naming its members."""
    return f"{ENSEMBLE_MODEL}{separator}({'+'.join(members)})"


def model_label(row: pd.Series, separator: str = "") -> str:
    """A row's model name; for the ensemble row, ensemble_name of its members."""
    if row["model"] == ENSEMBLE_MODEL:
        return ensemble_name(row["members"], separator)
    return str(row["model"]) + (" (collapsed)" if is_collapsed(row) else "")


def is_collapsed(row: pd.Series) -> bool:
    """Whether train flagged the row's model as collapsed (the ensemble row never is)."""
    value = row.get("collapsed")
    return isinstance(value, bool | np.bool_) and bool(value)


def draw_leaderboard(board: pd.DataFrame, rank_by: str, fingerprint: str) -> Any:
    """Bar chart of the ranking metric per model with its 95% CI, the best highlighted.

    The ensemble row, last, is orange.
    """
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(board) + 2), 4))
    colors = [
        "tab:orange" if model == ENSEMBLE_MODEL else "tab:green" if best else "tab:blue"
        for model, best in zip(board["model"], board["best"], strict=True)
    ]
    values = board[rank_by].astype(float).to_numpy()
    errors = None
    if f"{rank_by}_ci_low" in board:
        low = board[f"{rank_by}_ci_low"].astype(float).to_numpy()
        high = board[f"{rank_by}_ci_high"].astype(float).to_numpy()
        errors = np.nan_to_num(np.vstack([values - low, high - values]).clip(min=0))
    labels = [model_label(row, separator="\n") for _, row in board.iterrows()]
    axis.bar(labels, values, color=colors, yerr=errors, capsize=4)
    axis.set(title=f"Models on data {fingerprint} (95% CI)", ylabel=rank_by, ylim=(0, 1.05))
    for position, value in enumerate(values):
        axis.annotate(f"{value:.3f}", (position, 0.02), ha="center", va="bottom", fontsize=8)
    return figure


def interval_cells(board: pd.DataFrame, name: str) -> list[str]:
    """`0.850 [0.760, 0.920]`, or the value alone when no interval was logged."""
    cells = []
    for _, row in board.iterrows():
        value, low, high = row.get(name), row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
        if pd.isna(value):
            cells.append("")
        elif pd.isna(low) or pd.isna(high):
            cells.append(f"{value:.3f}")
        else:
            cells.append(f"{value:.3f} [{low:.3f}, {high:.3f}]")
    return cells


def markdown_table(
    board: pd.DataFrame, significance: float = 0.05, external: Sequence[str] = ()
) -> str:
    """The leaderboard as a Markdown table, the best marked with a star.

    Each external dataset adds its accuracy [95% CI], the drop from the internal test accuracy
    and the source shortcut accuracy, after the internal columns.
    """

    def number(column: str, digits: int, blank_zero: bool = False) -> list[str]:
        values = board[column] if column in board else pd.Series([None] * len(board))
        return [
            "" if pd.isna(value) or (blank_zero and value == 0) else f"{value:.{digits}f}"
            for value in values
        ]

    def p_value(value: Any) -> str:
        if value is None or pd.isna(value):
            return ""
        return f"{value:.3g}{' (significant)' if value < significance else ''}"

    external_cells: dict[str, list[str]] = {}
    for name in external:
        external_cells[f"{name} accuracy [95% CI]"] = interval_cells(
            board, external_metric(name, "accuracy")
        )
        external_cells[f"{name} drop"] = number(external_metric(name, "accuracy_drop"), 3)
        external_cells[f"{name} shortcut"] = number(
            external_metric(name, "source_shortcut_accuracy"), 3
        )
    table = pd.DataFrame(
        {
            "model": [
                f"**{model_label(row)}** *" if row["best"] else model_label(row)
                for _, row in board.iterrows()
            ],
            "accuracy [95% CI]": interval_cells(board, "test_accuracy"),
            "macro F1 [95% CI]": interval_cells(board, "test_f1_macro"),
            "ROC AUC [95% CI]": interval_cells(board, "test_roc_auc_ovr"),
            "balanced acc.": number("test_balanced_accuracy", 3),
            "covid sensitivity": number("test_covid_sensitivity", 3),
            "decision": decision_cells(board),
            "depth": number("depth", 0),
            "parameters": whole_numbers(board, "parameters"),
            "train s": number("train_seconds", 1),
            # A baseline's one fit logs epochs_run 0: no epochs, so no number.
            "epochs": number("epochs_run", 0, blank_zero=True),
            "images/s": number("inference_images_per_second", 1),
            "init": [backbone_init(row) or "" for _, row in board.iterrows()],
            "optimizer": board["optimizer"].fillna("").astype(str),
            "backend": board["backend"].fillna("").astype(str),
            "McNemar p vs best": [
                p_value(value) for value in board.get("mcnemar_p", [None] * len(board))
            ],
            **external_cells,
            "run": board["run_id"].astype(str).str[:8],
        }
    )
    return table.to_markdown(index=False, disable_numparse=True) + "\n"


def whole_numbers(board: pd.DataFrame, name: str) -> list[str]:
    """A count column as `1,208,419`, blank where not logged (the ensemble row, older runs)."""
    values = board[name] if name in board else pd.Series(np.nan, board.index)
    return ["" if pd.isna(value) else f"{int(round(value)):,}" for value in values]


def run_decision(tag: Any) -> str:
    """A run's evaluate.decision from its tag: argmax when evaluated before the tag existed."""
    return tag if isinstance(tag, str) and tag else ARGMAX


def decision_cells(board: pd.DataFrame) -> list[str]:
    """Each row's evaluate.decision (pooled: its folds' ones joined by /), none for the ensemble."""
    decisions = board["decision"] if "decision" in board else pd.Series(None, board.index)
    return [
        "" if model == ENSEMBLE_MODEL else run_decision(decision)
        for model, decision in zip(board["model"], decisions, strict=True)
    ]


def external_note(external: Sequence[str]) -> str:
    """What the external columns of leaderboard.md mean ('' without external datasets)."""
    if not external:
        return ""
    return (
        f"External datasets ({', '.join(external)}; evaluate.external): `<name> accuracy` on its "
        "images (on the classes it shares with the model), `drop` = internal test accuracy minus "
        "it on the same classes, `shortcut` = cross-validated accuracy of pixel_logreg telling "
        "its images from the training source's (about 0.5: hard to tell apart; near 1.0: a "
        "shortcut trap). See reports/external/<name>/summary.md."
    )


def leaderboard_markdown(
    board: pd.DataFrame,
    excluded: pd.DataFrame,
    fingerprint: str,
    settings: CompareParams,
    champion: str,
    ensemble: str,
    external: Sequence[str] = (),
) -> str:
    """reports/compare/leaderboard.md: the ranked table, the ensemble, excluded runs, champion."""
    excluded_text = (
        "\n\nExcluded (other data, never mixed in):\n\n" + excluded.to_markdown(index=False)
        if len(excluded)
        else ""
    )
    return (
        f"Leaderboard on data fingerprint `{fingerprint}`, ranked by {settings.rank_by} (* = best; "
        f"95% bootstrap CIs; McNemar exact test vs the best on the shared test images, "
        f"significant below {settings.significance})\n\n"
        + markdown_table(board, settings.significance, external)
        + f"\n{ensemble}\n"
        + (f"\n{external_note(external)}" if external else "")
        + excluded_text
        + f"\n\n{champion}\n"
    )


def board_entry(row: pd.Series, external: Sequence[str] = ()) -> dict[str, Any]:
    """One leaderboard row as strict JSON values (None, never NaN, for what was not logged).

    The external datasets' metrics go under `external`, by dataset name. `mcnemar_p_vs_best` is
    None for the best model and where no paired predictions exist; `mcnemar_p_vs_best_note`
    then says which (None beside a p-value).
    """
    entry: dict[str, Any] = {name: json_number(row[name]) for name in METRICS}
    if external:
        entry["external"] = {
            name: {
                key: json_number(row.get(external_metric(name, key))) for key in EXTERNAL_METRICS
            }
            for name in external
        }
    entry["parameters"] = None if pd.isna(row["parameters"]) else int(row["parameters"])
    depth = row.get("depth")
    entry["depth"] = None if depth is None or pd.isna(depth) else int(depth)
    epochs = row.get("epochs_run")
    entry["epochs_run"] = None if epochs is None or pd.isna(epochs) else int(epochs)
    entry["mcnemar_p_vs_best"] = json_number(row.get("mcnemar_p"))
    note = row.get("mcnemar_note")
    entry["mcnemar_p_vs_best_note"] = note if isinstance(note, str) else None
    entry["significant"] = bool(row["significant"])
    entry["pretrained"] = None if pd.isna(row["pretrained"]) else row["pretrained"] == "true"
    entry["backbone_init"] = backbone_init(row)
    entry["backend"] = None if pd.isna(row["backend"]) else str(row["backend"])
    entry["optimizer"] = None if pd.isna(row["optimizer"]) else str(row["optimizer"])
    entry["decision"] = run_decision(row.get("decision"))
    entry["collapsed"] = is_collapsed(row)
    reason = row.get("collapse_reason")
    entry["collapse_reason"] = reason if isinstance(reason, str) and reason else None
    return entry | {"run_id": row["run_id"]}


def backbone_init(row: pd.Series) -> str | None:
    """How a run's backbone started (random, pretrained, self_supervised); None for a baseline."""
    init = row.get("backbone_init")
    if isinstance(init, str) and init:
        return init
    pretrained = row.get("pretrained")
    if not isinstance(pretrained, str) or not pretrained:
        return None
    return "pretrained" if pretrained == "true" else "random"


def ensemble_entry(row: pd.Series) -> dict[str, Any]:
    """The ensemble row as JSON: a board_entry plus its name, members and shared test images."""
    return board_entry(row) | {
        "name": model_label(row),
        "members": list(row["members"]),
        "member_run_ids": list(row["member_run_ids"]),
        "test_images": int(row["test_images"]),
    }


def leaderboard_json(
    board: pd.DataFrame,
    excluded: pd.DataFrame,
    fingerprint: str,
    champion: dict[str, Any],
    ensemble: str,
    external: Sequence[str] = (),
) -> dict[str, Any]:
    """reports/compare/leaderboard.json: best model, every entry, ensemble, excluded, champion.

    `ensemble` is the line saying what the ensemble row averages, or why there is none.
    """
    single = board[board["model"] != ENSEMBLE_MODEL]
    averaged = board[board["model"] == ENSEMBLE_MODEL]
    return {
        "data_fingerprint": fingerprint,
        "models": len(single),
        "best_model": single["model"].iloc[0] if len(single) else None,
        "leaderboard": {row["model"]: board_entry(row, external) for _, row in single.iterrows()},
        "ensemble": ensemble_entry(averaged.iloc[0]) if len(averaged) else None,
        "ensemble_note": ensemble,
        # A run without a data_fingerprint tag has NaN there: null in JSON.
        "excluded": excluded.astype(object).where(excluded.notna(), None).to_dict(orient="records"),
        "champion": champion,
    }


def board_line(board: pd.DataFrame) -> str:
    """What compare prints about the leaderboard: how many models, the ensemble, the best."""
    single = board[board["model"] != ENSEMBLE_MODEL]
    best = f"best {single['model'].iloc[0]}" if len(single) else "no evaluated runs yet"
    averaged = ", with an ensemble row" if len(single) < len(board) else ""
    return f"{len(single)} model(s) on this data{averaged}, {best}"


def compare_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/summary/compare.json: the headline of a leaderboard_json report, scalars only.

    Also the leaderboard run's MLflow metrics; the rows, the excluded runs and the reasons stay in
    the report. None: not applicable (no model, no ensemble).
    """
    best = report["leaderboard"].get(report["best_model"] or "", {})
    champion = report["champion"]
    ensemble = report["ensemble"] or {}
    return {
        "best_model": report["best_model"],
        "best_test_accuracy": best.get("test_accuracy"),
        "best_test_f1_macro": best.get("test_f1_macro"),
        # Not `models`: a metric named like an output path (models/) breaks `dvc exp show --drop`.
        "models_compared": report["models"],
        "ensemble_test_accuracy": ensemble.get("test_accuracy"),
        "champion_action": champion.get("action"),
        # The version that holds the alias after this run, promoted or kept (None: no champion).
        "champion_version": champion.get("version", champion.get("champion_version")),
    }


def log_leaderboard(
    experiment_id: str,
    tags: Mapping[str, str],
    headline: Mapping[str, Any],
    files: Sequence[Path],
    table: pd.DataFrame,
) -> str:
    """Log the leaderboard as its own run (model=leaderboard) of its data; return the run id.

    The `files` (Markdown, chart, JSON report) and `table` (one row per model) are artifacts,
    the numbers of `headline` metrics. One such run per data fingerprint: compare run again
    deletes the previous one and logs the new leaderboard in its place, never a second copy.
    """
    identity = {"model": LEADERBOARD_MODEL, "data_fingerprint": tags["data_fingerprint"]}
    previous = find_run(experiment_id, identity)
    if previous is not None:
        MlflowClient().delete_run(previous)
    with mlflow.start_run(experiment_id=experiment_id, run_name=LEADERBOARD_MODEL) as run:
        tag_run({**tags, **identity})
        numbers = {
            key: float(value)
            for key, value in headline.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        mlflow.log_metrics(numbers)
        for path in files:
            mlflow.log_artifact(str(path))
        mlflow.log_table(table, artifact_file="leaderboard_table.json")
    return str(run.info.run_id)
