"""Classical scikit-learn baselines on flattened, downscaled gray pixels (no TensorFlow needed).

A baseline is a plain sklearn Pipeline whose `predict_proba` takes uint8 (N, S*S): the images
resized to train.baseline.image_size (S) and flattened row-major. Only sklearn classes go into
it, so models/model.joblib loads anywhere sklearn is installed, without this project's code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cxr.core.errors import PipelineError
from cxr.core.params import BaselineParams
from cxr.core.registry import BASELINE_NAMES


def _reduction(params: BaselineParams, seed: int) -> list[tuple[str, object]]:
    """Standardised pixels, then PCA when train.baseline.pca_components > 0."""
    steps: list[tuple[str, object]] = [("scale", StandardScaler())]
    if params.pca_components > 0:
        steps.append(("pca", PCA(params.pca_components, whiten=True, random_state=seed)))
    return steps


def pixel_logreg(params: BaselineParams, seed: int) -> Pipeline:
    """Multinomial logistic regression on standardised pixels."""
    classifier = LogisticRegression(C=params.c, max_iter=2000, random_state=seed)
    return Pipeline([*_reduction(params, seed), ("classify", classifier)])


def pixel_svm(params: BaselineParams, seed: int) -> Pipeline:
    """RBF support-vector machine on standardised pixels, probabilities by Platt scaling.

    One SVC fitted on all of train; the sigmoid calibration is fitted on cross-validated
    decision values (what SVC(probability=True), deprecated in sklearn 1.9, did inside).
    """
    svc = SVC(C=params.c, kernel="rbf", random_state=seed)
    classifier = CalibratedClassifierCV(svc, method="sigmoid", ensemble=False)
    return Pipeline([*_reduction(params, seed), ("classify", classifier)])


def pixel_rf(params: BaselineParams, seed: int) -> Pipeline:
    """Random forest on raw pixels (trees need no scaling; PCA still applies when asked)."""
    steps = _reduction(params, seed) if params.pca_components > 0 else []
    classifier = RandomForestClassifier(params.trees, n_jobs=-1, random_state=seed)
    return Pipeline([*steps, ("classify", classifier)])


# Keyed by function name, so each name in cxr.core.registry.BASELINE_NAMES is written once
# here: as the builder's name (tests/models/test_baselines.py checks the two agree).
BASELINES: dict[str, Callable[[BaselineParams, int], Pipeline]] = {
    builder.__name__: builder for builder in (pixel_logreg, pixel_svm, pixel_rf)
}


def build_baseline(name: str, params: BaselineParams, seed: int) -> Pipeline:
    """The unfitted pipeline of baseline `name`, or fail listing the known names."""
    try:
        return BASELINES[name](params, seed)
    except KeyError:
        known = ", ".join(BASELINE_NAMES)
        raise PipelineError(f"model = {name!r}: unknown baseline; known: {known}") from None


def flatten_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S[, 1]) images as uint8 (N, S*S) rows, row-major: the baselines' input."""
    return np.ascontiguousarray(images.reshape(len(images), -1), dtype=np.uint8)


def fitted_parameter_count(pipeline: Pipeline) -> int:
    """Numbers the fitted pipeline learned: float arrays of its steps, tree nodes of a forest."""
    return sum(_learned_values(step) for _, step in pipeline.steps)


def _learned_values(estimator: object) -> int:
    """Float fitted arrays (`name_`) of one estimator and of the estimators it fitted inside."""
    count = 0
    for attribute, value in vars(estimator).items():
        # float arrays are learned values; integer ones are labels or counts
        if attribute.endswith("_") and isinstance(value, np.ndarray) and value.dtype.kind == "f":
            count += value.size
    for tree in getattr(estimator, "estimators_", []):
        count += int(tree.tree_.node_count)
    for calibrated in getattr(estimator, "calibrated_classifiers_", []):
        count += _learned_values(calibrated.estimator)
        count += sum(_learned_values(calibrator) for calibrator in calibrated.calibrators)
    return count
