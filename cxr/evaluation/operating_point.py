"""The covid decision moved off argmax: one weight on the covid probability, fit on validation.

argmax calls an image covid when covid is its most probable class. A screening test may want
another trade: more covid images found for more false alarms, or the decision that balances the
classes best. `evaluate.decision` fits one number on the validation split (images the model never
trained on, and never the test split): the weight w of the covid probability, the others kept,
the row renormalised. An image is then called covid when w * p_covid beats every other class, an
offset log w on the covid logit (post-hoc logit adjustment, Menon et al. 2021); for two classes
it moves the covid threshold from 0.5 to 1 / (1 + w).

- `val_macro_f1`: the weight whose decisions give the validation split its best macro F1 (of
  equal ones, the nearest to 1: the smallest move).
- `val_covid_sensitivity`: the smallest weight under which the validation covid sensitivity
  reaches `evaluate.target_sensitivity`: the most specific operating point that finds that share
  (a fixed-sensitivity operating point). Where argmax finds more than that on validation, the
  weight falls under 1: sensitivity is traded down to the target for specificity.

The test probabilities are reweighted before anything is scored, so every figure, the prediction
table, the pooled cross-validated leaderboard and the ensemble row see the moved decision. Two
classes keep their ROC AUC (the map is monotone); log loss and calibration change with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, recall_score

from cxr.core.errors import PipelineError
from cxr.evaluation.metrics import ARGMAX, SCREENING_CLASS
from cxr.models.loading import Predictor

ARGMAX_RECORD = {"decision": ARGMAX, "decision_covid_weight": 1.0}  # what argmax records
FLOOR = 1e-12  # a probability of 0 still has a finite logit


def class_weights(class_count: int, covid: int, covid_weight: float) -> np.ndarray:
    """(classes,) weights: `covid_weight` at the covid position, 1 elsewhere."""
    weights = np.ones(class_count)
    weights[covid] = covid_weight
    return weights


def reweighted(probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row times `weights`, renormalised to sum to 1 (float32, as a model's output)."""
    scaled = np.asarray(probabilities, dtype=np.float64) * weights
    totals = scaled.sum(axis=1, keepdims=True)
    return np.asarray(scaled / np.where(totals > 0, totals, 1.0), dtype=np.float32)


def candidate_weights(probabilities: np.ndarray, covid: int) -> np.ndarray:
    """Weights, in increasing order, that give every distinct set of covid calls once.

    Image i changes its call at w_i = max(other classes) / p_covid: the candidates are the
    geometric midpoints between consecutive w_i, one below the first and one above the last, and 1
    (argmax itself).
    """
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), FLOOR, None)
    others = np.delete(clipped, covid, axis=1).max(axis=1)
    flips = np.unique(np.log(others) - np.log(clipped[:, covid]))
    between = (flips[:-1] + flips[1:]) / 2
    edges = [flips[0] - 1.0, flips[-1] + 1.0] if len(flips) else []
    return np.exp(np.unique(np.concatenate([between, edges, [0.0]])))


def fit_covid_weight(
    true: np.ndarray,
    probabilities: np.ndarray,
    class_names: tuple[str, ...],
    decision: str,
    target_sensitivity: float,
) -> float:
    """The covid weight `decision` picks on validation images (true labels, probabilities)."""
    covid = class_names.index(SCREENING_CLASS)
    labels = list(range(len(class_names)))
    candidates = candidate_weights(probabilities, covid)

    def calls(weight: float) -> np.ndarray:
        weights = class_weights(len(class_names), covid, weight)
        return np.asarray(reweighted(probabilities, weights).argmax(axis=1))

    if decision == "val_macro_f1":
        scores = np.array(
            [
                f1_score(true, calls(w), labels=labels, average="macro", zero_division=0)
                for w in candidates
            ]
        )
        best = np.flatnonzero(np.isclose(scores, scores.max()))
        return float(candidates[best[np.argmin(np.abs(np.log(candidates[best])))]])
    sensitivities = np.array(
        [
            recall_score(true, calls(w), labels=[covid], average="macro", zero_division=0)
            for w in candidates
        ]
    )
    # the largest weight calls every image covid, so some candidate always reaches the target
    return float(candidates[np.flatnonzero(sensitivities >= target_sensitivity - 1e-9)[0]])


def check_fit_data(true: np.ndarray, class_names: tuple[str, ...], decision: str) -> None:
    """A one-line error when the validation images cannot place the covid decision."""
    if SCREENING_CLASS not in class_names:
        raise PipelineError(
            f"evaluate.decision = {decision!r} moves the {SCREENING_CLASS!r} decision, but this "
            f"model's classes are {list(class_names)}; set evaluate.decision: {ARGMAX}"
        )
    covid = class_names.index(SCREENING_CLASS)
    if not (true == covid).any() or (true == covid).all():
        raise PipelineError(
            f"evaluate.decision = {decision!r} needs {SCREENING_CLASS} and other images in the "
            f"validation split to fit on; it has {len(true)} image(s), "
            f"{int((true == covid).sum())} of them {SCREENING_CLASS} (raise "
            f"split.val_fraction, or set evaluate.decision: {ARGMAX})"
        )


@dataclass(frozen=True)
class ReweightedPredictor(Predictor):
    """A Predictor whose probabilities are `inner`'s reweighted by `weights` (renormalised)."""

    inner: Predictor
    weights: tuple[float, ...]

    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """`inner`'s class probabilities of the images, reweighted."""
        return reweighted(self.inner.predict_proba(images, batch_size), np.array(self.weights))


def with_decision(
    predictor: Predictor,
    decision: str,
    target_sensitivity: float,
    val_true: np.ndarray,
    val_probabilities: np.ndarray,
) -> tuple[Predictor, dict[str, Any]]:
    """`predictor` deciding by `decision` (not argmax) fit on validation images, and a record.

    Recorded: `decision_covid_weight` (1 under argmax), the validation images it was fit on, and
    for two classes `decision_covid_threshold`, the covid probability from which an image is
    called covid.
    """
    names = predictor.class_names
    check_fit_data(val_true, names, decision)
    weight = fit_covid_weight(val_true, val_probabilities, names, decision, target_sensitivity)
    recorded: dict[str, Any] = {
        "decision": decision,
        "decision_covid_weight": round(weight, 6),
        "decision_val_images": len(val_true),
    }
    if len(names) == 2:
        recorded["decision_covid_threshold"] = round(1 / (1 + weight), 6)
    return covid_weighted(predictor, recorded["decision_covid_weight"]), recorded


def covid_weighted(predictor: Predictor, weight: float) -> Predictor:
    """`predictor` with its covid probability weighted by `weight` (rows renormalised)."""
    names = predictor.class_names
    weights = tuple(class_weights(len(names), names.index(SCREENING_CLASS), weight).tolist())
    return ReweightedPredictor(
        predictor.model, predictor.record, predictor.source, predictor, weights
    )


def with_evaluated_decision(
    predictor: Predictor, evaluated: Mapping[str, Any]
) -> tuple[Predictor, dict[str, Any]]:
    """`predictor` deciding as evaluate did, by the weight its summary records (not fit again).

    `evaluated` is metrics/summary/evaluate.json: external validation scores other images the
    way the internal test figures it is compared with were scored.
    """
    decision = evaluated.get("decision", ARGMAX)
    if decision == ARGMAX:
        return predictor, dict(ARGMAX_RECORD)
    weight = float(evaluated["decision_covid_weight"])
    recorded = {"decision": decision, "decision_covid_weight": weight}
    return covid_weighted(predictor, weight), recorded
