"""External validation's pieces: classes, renormalisation, the drop and the shortcut check."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cxr.core.errors import PipelineError
from cxr.core.params import BaselineParams
from cxr.evaluation.metrics import Predictions
from cxr.external.scores import (
    class_note,
    drops,
    external_scores,
    internal_reference,
    on_shared_classes,
    shared_classes,
)
from cxr.external.shortcut import shortcut_note, shortcut_sample, source_shortcut
from cxr.external.validation import ExternalWarnings, as_external_keys
from cxr.ingestion.phantoms import render_phantom

MODEL_CLASSES = ("covid", "normal", "viral_pneumonia")
BASELINE = BaselineParams(image_size=32, pca_components=0, c=1.0, trees=10)


def phantoms(count: int, seed: int, exposure: float = 1.0) -> np.ndarray:
    """`count` covid and `count` normal phantoms at 32 px as uint8 (N, 32, 32, 1)."""
    images = [
        render_phantom(label, np.random.default_rng([seed, position, index]), 32, 0.5, exposure)
        for position, label in enumerate(("covid", "normal"))
        for index in range(count)
    ]
    return np.stack(images)[..., np.newaxis]


def test_a_class_the_model_does_not_know_is_one_line_naming_it_and_the_fixes():
    # given an external set holding lung_opacity, which the model was not trained on
    counts = {"covid": 5, "lung_opacity": 3}
    # when its classes are matched with the model's
    with pytest.raises(PipelineError) as error:
        shared_classes("site_b", counts, MODEL_CLASSES)
    # then one line names the class, its count, the model's classes and both ways out
    message = str(error.value)
    assert "\n" not in message
    assert "'lung_opacity' (3 images)" in message
    assert "evaluate.external.site_b.label_map" in message
    assert "evaluate.external.site_b.classes" in message


def test_shared_classes_keep_the_model_order_and_need_two():
    # given external sets with a subset of the model's classes
    assert shared_classes("b", {"normal": 4, "covid": 2}, MODEL_CLASSES) == ("covid", "normal")
    # then one class alone cannot be scored, and says so
    with pytest.raises(PipelineError, match="images of 1 of the model's classes"):
        shared_classes("b", {"normal": 4}, MODEL_CLASSES)


def test_probabilities_are_renormalised_over_the_shared_classes():
    # given the model's probabilities over three classes, and an external set of two of them
    probabilities = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.0, 0.0, 1.0]])
    # when restricted to covid and normal
    kept = on_shared_classes(probabilities, MODEL_CLASSES, ("covid", "normal"))
    # then each row sums to one, in the same ratio; a row with nothing on them is even
    np.testing.assert_allclose(kept, [[0.625, 0.375], [0.5, 0.5], [0.5, 0.5]])
    assert "2 of the model's 3 classes (covid, normal), probabilities renormalised" in class_note(
        ("covid", "normal"), MODEL_CLASSES
    )
    assert class_note(MODEL_CLASSES, MODEL_CLASSES) == "scored on all 3 classes of the model"


def test_external_scores_have_intervals_for_all_five_figures():
    # given predictions of 40 images over two classes, most right
    rng = np.random.default_rng(0)
    true = np.arange(40) % 2
    probabilities = np.where(rng.random(40) < 0.8, true, 1 - true)
    probabilities = np.stack([1 - probabilities * 0.8 - 0.1, probabilities * 0.8 + 0.1], axis=1)
    predictions = Predictions(true, probabilities, ("covid", "normal"))
    # when scored as an external set
    metrics = external_scores(predictions, samples=200, calibration_bins=5, seed=1)
    # then the figures are named without test_, each with a 95% interval around it
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "covid_sensitivity"):
        low, high = metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"]
        assert low <= metrics[key] <= high, key
    assert metrics["images"] == 40 and "test_accuracy" not in metrics


def test_the_internal_reference_is_rescored_on_the_shared_classes():
    # given internal test predictions over three classes (a viral image counted wrong)
    table = pd.DataFrame(
        {
            "actual": ["covid", "normal", "viral_pneumonia", "covid"],
            "p_covid": [0.5, 0.1, 0.6, 0.4],
            "p_normal": [0.1, 0.5, 0.1, 0.1],
            "p_viral_pneumonia": [0.4, 0.4, 0.3, 0.5],
        }
    )
    evaluated = {"test_accuracy": 0.25}
    # when the external set shares covid and normal only
    reference = internal_reference(evaluated, table, MODEL_CLASSES, ("covid", "normal"))
    # then the internal figure is on those images and classes: all three right once renormalised
    assert reference["accuracy"] == 1.0
    # and with every class shared it is evaluate.json's own figure
    assert internal_reference(evaluated, table, MODEL_CLASSES, MODEL_CLASSES)["accuracy"] == 0.25
    assert drops({"accuracy": 0.9, "f1_macro": None}, {"accuracy": 0.6})["accuracy_drop"] == (
        pytest.approx(0.3)
    )


def test_the_shortcut_check_tells_a_shifted_exposure_from_the_same_scanner():
    # given training-source phantoms, phantoms of another seed (same scanner) and phantoms of
    # another seed at another exposure (another scanner)
    internal = phantoms(60, seed=1)
    same_scanner = phantoms(60, seed=2)
    other_scanner = phantoms(60, seed=3, exposure=1.5)
    # when pixel_logreg is cross-validated on telling them from the training source
    same = source_shortcut(internal, same_scanner, BASELINE, samples=200, seed=0)
    other = source_shortcut(internal, other_scanner, BASELINE, samples=200, seed=0)
    # then the same scanner is hard to tell apart, the other exposure is a shortcut trap
    assert same["source_shortcut_accuracy"] < 0.7
    assert other["source_shortcut_accuracy"] >= 0.9
    assert other["source_shortcut_note"].startswith("a shortcut trap")
    assert other["source_shortcut_folds"] == 5
    assert other["source_shortcut_images_per_source"] == 120
    low, high = other["source_shortcut_accuracy_ci_low"], other["source_shortcut_accuracy_ci_high"]
    assert low <= other["source_shortcut_accuracy"] <= high


def test_the_shortcut_sample_balances_each_shared_class_across_sources():
    # given an internal train split with three classes and an external set with two
    internal = pd.DataFrame({"label": ["covid"] * 10 + ["normal"] * 3 + ["viral_pneumonia"] * 5})
    external = pd.DataFrame({"label": ["covid"] * 4 + ["normal"] * 8})
    # when the shortcut sample is drawn
    chosen_internal, chosen_external = shortcut_sample(internal, external, seed=0)
    # then both sides hold the same number of each shared class, and nothing else
    assert chosen_internal["label"].value_counts().to_dict() == {"covid": 4, "normal": 3}
    assert chosen_external["label"].value_counts().to_dict() == {"covid": 4, "normal": 3}
    assert "too few images" in shortcut_note(None)


def test_ingest_messages_name_the_external_dataset_keys():
    # given an ingest message about data options, and a warning through the external collector
    text = "data.source = '/x': no image files; see data.layout (metadata.csv, data/raw)"
    # then each data.<option> becomes evaluate.external.<name>.<option>, paths stay as they are
    assert as_external_keys(text, "site_b") == (
        "evaluate.external.site_b.source = '/x': no image files; see "
        "evaluate.external.site_b.layout (metadata.csv, data/raw)"
    )
    stream = io.StringIO()
    collected = ExternalWarnings("site_b", stream)
    collected.warn("single_class_source", "data.source = 'x': one class")
    assert stream.getvalue() == "warning: evaluate.external.site_b.source = 'x': one class\n"
    assert collected.to_metrics() == {"single_class_source": 1}
