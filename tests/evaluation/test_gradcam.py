import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.dummy import DummyClassifier

from cxr.evaluation.gradcam import (
    NoFeatureMapError,
    backbone_split,
    check_explainable,
    draw_gradcam_grid,
    gradcam_heatmaps,
    save_overlay,
)
from cxr.models.classifier import average_members, ensemble_members

SIZE = 32
LESION = 8


def tiny_cnn(classes: int = 2) -> keras.Model:
    """A small classifier with the contract's layer names (image, backbone_input, backbone ...)."""
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    scaled = keras.layers.Rescaling(1 / 255, name="backbone_input")(inputs)
    backbone = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        ],
        name="backbone",
    )
    features = keras.layers.GlobalMaxPooling2D(name="head_pool")(backbone(scaled))
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(features)
    return keras.Model(inputs, outputs)


def lesion_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy gray images; label 1 carries a bright square lesion at a random place (its mask)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(90, 12, (count, SIZE, SIZE, 1))
    labels = np.arange(count) % 2
    masks = np.zeros((count, SIZE, SIZE), bool)
    for index in np.flatnonzero(labels):
        row, column = rng.integers(2, SIZE - LESION - 2, size=2)
        masks[index, row : row + LESION, column : column + LESION] = True
        images[index, row : row + LESION, column : column + LESION] += 110
    return np.clip(images, 0, 255).astype(np.uint8), labels, masks


@pytest.fixture(scope="module")
def trained() -> keras.Model:
    keras.utils.set_random_seed(0)
    images, labels, _ = lesion_images(128, seed=1)
    model = tiny_cnn()
    model.compile(
        keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(images, labels, epochs=6, batch_size=32, verbose=0)
    return model


def test_heatmaps_have_the_image_shape_and_unit_range(trained):
    images, labels, _ = lesion_images(6, seed=2)
    maps = gradcam_heatmaps(trained, images, labels, batch_size=4)
    assert maps.shape == (6, SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_heatmap_mass_lies_on_the_planted_lesion(trained):
    # given images with a bright lesion the model learned to detect
    images, labels, masks = lesion_images(24, seed=3)
    assert trained.evaluate(images, labels, verbose=0)[1] >= 0.9
    sick = labels == 1
    # when Grad-CAM explains the lesion class
    maps = gradcam_heatmaps(trained, images[sick], np.ones(sick.sum(), int))
    # then the heat per pixel inside the lesion is well above the background's
    inside = np.array([heat[mask].mean() for heat, mask in zip(maps, masks[sick], strict=True)])
    outside = np.array([heat[~mask].mean() for heat, mask in zip(maps, masks[sick], strict=True)])
    assert np.mean(inside > outside) >= 0.9
    assert inside.mean() > 2 * outside.mean()


def test_grid_and_overlay_pngs(tmp_path, trained):
    images, labels, _ = lesion_images(5, seed=4)
    maps = gradcam_heatmaps(trained, images, labels)
    draw_gradcam_grid(images, maps, [f"#{i}" for i in range(5)], "lesion", tmp_path / "grid.png")
    save_overlay(images[0], maps[0], "one", tmp_path / "one.png")
    draw_gradcam_grid(images[:0], maps[:0], [], "none", tmp_path / "empty.png")
    for name in ("grid.png", "one.png", "empty.png"):
        assert Image.open(tmp_path / name).format == "PNG"


def test_models_without_a_feature_map_are_refused_with_a_reason():
    fitted = DummyClassifier().fit(np.zeros((2, 4)), [0, 1])
    with pytest.raises(NoFeatureMapError, match="no convolutional feature map"):
        backbone_split(fitted)
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    flat = keras.layers.Flatten(name="backbone")(inputs)
    dense = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(flat))
    with pytest.raises(NoFeatureMapError, match="rank 2"):
        backbone_split(dense)
    no_backbone = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(NoFeatureMapError, match="no layer named"):
        backbone_split(no_backbone)


def test_a_seed_ensemble_is_explained_by_the_mean_of_its_members_maps(tmp_path, trained):
    # given a seed ensemble of the trained model and an untrained one, saved and loaded again
    keras.utils.set_random_seed(5)
    untrained = tiny_cnn()
    ensemble = average_members([trained, untrained], "tiny")
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras")
    images, labels, _ = lesion_images(6, seed=6)
    # then it predicts the mean of its members' probabilities
    mean = (trained.predict(images, verbose=0) + untrained.predict(images, verbose=0)) / 2
    np.testing.assert_allclose(loaded.predict(images, verbose=0), mean, rtol=1e-5, atol=1e-6)
    assert [member.name for member in ensemble_members(loaded)] == ["member_0", "member_1"]
    # and its Grad-CAM map is the mean of the members' maps, rescaled to a peak of 1
    check_explainable(loaded)
    maps = gradcam_heatmaps(loaded, images, labels)
    members = [gradcam_heatmaps(model, images, labels) for model in (trained, untrained)]
    expected = np.mean(members, axis=0)
    expected /= np.where(
        expected.max(axis=(1, 2), keepdims=True) > 0, expected.max(axis=(1, 2), keepdims=True), 1
    )
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)
    assert maps.shape == (6, SIZE, SIZE) and maps.max() <= 1 + 1e-6
    # and a plain model has no members
    assert ensemble_members(trained) == []
