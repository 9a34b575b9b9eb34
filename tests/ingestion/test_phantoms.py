"""Tests for the embedded chest-radiograph phantom generator (cxr/ingestion/phantoms.py)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from cpu_features import dispatched_features, run_without_dispatch
from PIL import Image
from scipy import ndimage

from cxr.ingestion.phantoms import PHANTOM_CLASSES, render_phantom, write_phantom_dataset

FINDING_CLASSES = ("covid", "viral_pneumonia", "lung_opacity")
SMALL = 64
PAIRED_IMAGES = 30
# The smallest phantom side: keeps tests that draw many images quick.
MIN_SIZE_FOR_SPEED = 32


def _tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by its path relative to root."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _otsu_threshold(image: np.ndarray) -> int:
    """Grey level that best splits a uint8 image into a dark and a bright class."""
    hist = np.bincount(image.ravel(), minlength=256).astype(float)
    levels = np.arange(256)
    weight_dark = np.cumsum(hist)
    weight_bright = weight_dark[-1] - weight_dark
    sum_dark = np.cumsum(hist * levels)
    sum_bright = sum_dark[-1] - sum_dark
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (
            weight_dark * weight_bright * (sum_dark / weight_dark - sum_bright / weight_bright) ** 2
        )
    return int(np.nanargmax(between))


def _dark_regions(image: np.ndarray) -> tuple[np.ndarray, int, set[int]]:
    """Connected dark (air) regions of an image: (labels, count, labels touching the border)."""
    smooth = np.rint(ndimage.gaussian_filter(image.astype(float), 1.0)).astype(np.uint8)
    labels, count = ndimage.label(smooth <= _otsu_threshold(smooth))
    border = {int(i) for i in np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])}
    return labels, count, border - {0}


def _lung_masks(image: np.ndarray) -> list[np.ndarray]:
    """The two biggest dark regions not touching the border: the lung fields, read off the image."""
    labels, count, border = _dark_regions(image)
    # The background is dark too but touches the border; lungs are enclosed by the body.
    sizes = ndimage.sum(labels > 0, labels, range(1, count + 1))
    enclosed = [i + 1 for i in np.argsort(sizes)[::-1] if i + 1 not in border]
    return [ndimage.binary_fill_holes(labels == component) for component in enclosed[:2]]


def _background_mask(image: np.ndarray) -> np.ndarray:
    """Air around the body: the dark regions that touch the image border."""
    labels, _, border = _dark_regions(image)
    return np.isin(labels, list(border))


def _finding_map(label: str, seed: int, difficulty: float) -> tuple[np.ndarray, np.ndarray]:
    """(normal image, extra brightness of `label`) for the same patient, pose and noise."""
    normal = render_phantom("normal", np.random.default_rng([seed]), SMALL, difficulty)
    sick = render_phantom(label, np.random.default_rng([seed]), SMALL, difficulty)
    return normal, sick.astype(float) - normal


@pytest.fixture(scope="module")
def finding_zones() -> dict[str, dict[str, np.ndarray]]:
    """Per class, per paired image: where the extra brightness lies relative to the lungs."""
    size = SMALL
    rows, cols = np.mgrid[0:size, 0:size]
    middle = (size - 1) / 2
    zones: dict[str, dict[str, list[float]]] = {}
    for label in FINDING_CLASSES:
        stats: dict[str, list[float]] = {
            key: []
            for key in ("inside", "lower_lateral", "medial", "larger_lung_share", "lung_mean")
        }
        for seed in range(PAIRED_IMAGES):
            normal, diff = _finding_map(label, seed, 0.5)
            extra = np.clip(diff, 0.0, None)
            total = extra.sum()
            lungs = _lung_masks(normal)
            assert len(lungs) == 2, f"could not find two lungs in normal image {seed}"
            both = lungs[0] | lungs[1]
            lower_lateral = np.zeros_like(both)
            medial = np.zeros_like(both)
            for lung in lungs:
                centre_row, centre_col = ndimage.center_of_mass(lung)
                # Lateral = further from the body midline than the lung's own centre.
                lateral = np.abs(cols - middle) > abs(centre_col - middle)
                lower_lateral |= lung & lateral & (rows > centre_row)
                medial |= lung & ~lateral
            per_lung = [extra[lung].sum() for lung in lungs]
            # Two pixels of slack: the detector blur spreads an edge by about that much.
            near_lungs = ndimage.binary_dilation(both, iterations=2)
            stats["inside"].append(extra[near_lungs].sum() / total)
            stats["lower_lateral"].append(extra[lower_lateral].sum() / total)
            stats["medial"].append(extra[medial].sum() / total)
            stats["larger_lung_share"].append(max(per_lung) / sum(per_lung))
            stats["lung_mean"].append(diff[both].mean())
        zones[label] = stats
    return {label: {k: np.array(v) for k, v in stats.items()} for label, stats in zones.items()}


@pytest.mark.parametrize("label", PHANTOM_CLASSES)
def test_render_returns_square_uint8_radiograph(label: str) -> None:
    # Given a seeded generator
    rng = np.random.default_rng(0)

    # When a phantom is rendered
    image = render_phantom(label, rng, 80, 0.5)

    # Then it is a square 8-bit grayscale image using the dynamic range: dark air, bright bone
    assert image.shape == (80, 80)
    assert image.dtype == np.uint8
    assert image.min() < 40
    assert image.max() > 150
    assert image.std() > 20


def test_render_is_deterministic_for_the_same_generator_state() -> None:
    # Given two generators with the same seed
    first = render_phantom("covid", np.random.default_rng(7), SMALL, 0.5)

    # When the same label is rendered from each
    second = render_phantom("covid", np.random.default_rng(7), SMALL, 0.5)

    # Then the pixels are identical, and another seed gives another image
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, render_phantom("covid", np.random.default_rng(8), SMALL, 0.5))


@pytest.mark.parametrize("label", FINDING_CLASSES)
def test_nuisances_do_not_depend_on_the_label(label: str) -> None:
    # Given the same generator state used for a sick and a normal phantom
    for seed in range(5):
        normal, diff = _finding_map(label, seed, 1.0)

        # When the two are compared outside the body
        background = _background_mask(normal)

        # Then pose, brightness and noise are identical there: only the findings differ
        assert background.mean() > 0.03
        assert np.count_nonzero(diff) > 0
        assert np.all(diff[background] == 0)


def test_write_lays_out_one_folder_per_class_and_returns_counts(tmp_path: Path) -> None:
    # Given a mix of requested counts, including a zero
    target = tmp_path / "phantoms"
    counts = {"covid": 3, "normal": 0, "lung_opacity": 2}

    # When the dataset is written
    written = write_phantom_dataset(target, counts, SMALL, 0.5, seed=1)

    # Then every requested image exists under <label>/<label>_<index:05d>.png and nothing else
    assert written == {"covid": 3, "normal": 0, "lung_opacity": 2}
    assert sorted(_tree_digests(target)) == [
        "covid/covid_00000.png",
        "covid/covid_00001.png",
        "covid/covid_00002.png",
        "lung_opacity/lung_opacity_00000.png",
        "lung_opacity/lung_opacity_00001.png",
    ]
    assert not (target / "normal").exists()
    assert not (target / "viral_pneumonia").exists()
    # Nothing was written beside the target (e.g. stray temp files)
    assert [p.name for p in tmp_path.iterdir()] == ["phantoms"]


def test_written_pngs_are_plain_grayscale_matching_the_per_image_generator(tmp_path: Path) -> None:
    # Given a small dataset
    write_phantom_dataset(tmp_path, {"viral_pneumonia": 2}, 48, 0.3, seed=5)

    # When a file is read back
    with Image.open(tmp_path / "viral_pneumonia" / "viral_pneumonia_00001.png") as png:
        mode, size, info = png.mode, png.size, dict(png.info)
        pixels = np.asarray(png)

    # Then it is an 8-bit grayscale PNG with no metadata, rendered from rng([seed, class, index])
    assert (mode, size) == ("L", (48, 48))
    assert info == {}
    class_index = PHANTOM_CLASSES.index("viral_pneumonia")
    expected = render_phantom(
        "viral_pneumonia", np.random.default_rng([5, class_index, 1]), 48, 0.3
    )
    np.testing.assert_array_equal(pixels, expected)


def test_same_seed_gives_identical_bytes_whatever_the_other_counts(tmp_path: Path) -> None:
    # Given two runs with one seed but different counts for the other classes
    write_phantom_dataset(tmp_path / "a", {"covid": 2, "normal": 2}, SMALL, 0.5, seed=11)
    write_phantom_dataset(
        tmp_path / "b", {"covid": 2, "normal": 5, "lung_opacity": 1}, SMALL, 0.5, seed=11
    )

    # When the files are hashed
    first, second = _tree_digests(tmp_path / "a"), _tree_digests(tmp_path / "b")

    # Then every file of the first run has the same bytes in the second
    assert first == {name: second[name] for name in first}


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    # Given two runs that differ only by seed
    counts = {label: 2 for label in PHANTOM_CLASSES}
    write_phantom_dataset(tmp_path / "a", counts, SMALL, 0.5, seed=1)
    write_phantom_dataset(tmp_path / "b", counts, SMALL, 0.5, seed=2)

    # When the files are hashed
    first, second = _tree_digests(tmp_path / "a"), _tree_digests(tmp_path / "b")

    # Then the same names exist but no file is identical
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first)


def test_rewriting_replaces_files_in_place(tmp_path: Path) -> None:
    # Given a dataset already on disk, with one file corrupted
    write_phantom_dataset(tmp_path, {"normal": 2}, SMALL, 0.5, seed=4)
    before = _tree_digests(tmp_path)
    (tmp_path / "normal" / "normal_00000.png").write_bytes(b"garbage")

    # When it is written again with the same arguments
    write_phantom_dataset(tmp_path, {"normal": 2}, SMALL, 0.5, seed=4)

    # Then the files are restored and no temp file is left behind
    assert _tree_digests(tmp_path) == before


@pytest.mark.parametrize("call", ["render", "write"])
def test_unknown_label_is_rejected_with_the_known_labels(call: str, tmp_path: Path) -> None:
    # Given a label that is not a phantom class
    label = "tuberculosis"

    # When it is requested
    with pytest.raises(ValueError) as error:
        if call == "render":
            render_phantom(label, np.random.default_rng(0), SMALL, 0.5)
        else:
            write_phantom_dataset(tmp_path / "out", {"normal": 1, label: 1}, SMALL, 0.5, seed=0)

    # Then the one-line message names it and lists the valid classes, and nothing is written
    message = str(error.value)
    assert "\n" not in message
    assert "tuberculosis" in message
    assert all(known in message for known in PHANTOM_CLASSES)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argument", "value", "expected"),
    [
        ("image_size", 31, ["image_size", "31", "32"]),
        ("image_size", 0, ["image_size", "0", "32"]),
        ("difficulty", -0.1, ["difficulty", "-0.1", "[0, 1]"]),
        ("difficulty", 1.5, ["difficulty", "1.5", "[0, 1]"]),
        ("difficulty", math.nan, ["difficulty", "nan", "[0, 1]"]),
    ],
)
@pytest.mark.parametrize("call", ["render", "write"])
def test_out_of_range_arguments_are_rejected(
    call: str, argument: str, value: float, expected: list[str], tmp_path: Path
) -> None:
    # Given otherwise valid arguments with one out of range
    image_size = int(value) if argument == "image_size" else SMALL
    difficulty = value if argument == "difficulty" else 0.5

    # When the generator is called
    with pytest.raises(ValueError) as error:
        if call == "render":
            render_phantom("normal", np.random.default_rng(0), image_size, difficulty)
        else:
            write_phantom_dataset(tmp_path / "out", {"normal": 1}, image_size, difficulty, seed=0)

    # Then the message names the argument, the value and the allowed range
    assert all(part in str(error.value) for part in expected)
    assert not (tmp_path / "out").exists()


def test_negative_count_is_rejected(tmp_path: Path) -> None:
    # Given a negative count
    # When the dataset is written
    with pytest.raises(ValueError, match="covid"):
        write_phantom_dataset(tmp_path / "out", {"covid": -1}, SMALL, 0.5, seed=0)

    # Then nothing is written
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("label", FINDING_CLASSES)
def test_findings_stay_inside_the_lungs_and_brighten_them(
    label: str, finding_zones: dict[str, dict[str, np.ndarray]]
) -> None:
    # Given paired normal / sick phantoms (same patient, pose and noise)
    stats = finding_zones[label]

    # When the extra brightness is located relative to the lungs seen on the normal image
    # Then (almost) all of it lies in the lung fields, which get brighter on average
    assert stats["inside"].min() > 0.93
    assert stats["lung_mean"].mean() > 3.0
    assert (stats["lung_mean"] > 0).all()


def test_covid_is_bilateral_peripheral_and_lower_zone(
    finding_zones: dict[str, dict[str, np.ndarray]],
) -> None:
    # Given the covid findings of many phantoms
    covid = finding_zones["covid"]

    # When their placement is summarised
    # Then they sit mostly in the lower-lateral quarter of each lung, in both lungs
    assert covid["lower_lateral"].mean() > 0.6
    assert covid["medial"].mean() < 0.2
    assert covid["larger_lung_share"].max() < 0.9


def test_viral_pneumonia_is_bilateral_and_perihilar(
    finding_zones: dict[str, dict[str, np.ndarray]],
) -> None:
    # Given the viral pneumonia findings of many phantoms
    viral = finding_zones["viral_pneumonia"]

    # When their placement is summarised
    # Then they sit mostly in the medial (hilar) half of both lungs, unlike covid
    assert viral["medial"].mean() > 0.6
    assert viral["lower_lateral"].mean() < finding_zones["covid"]["lower_lateral"].mean() / 3
    assert viral["larger_lung_share"].max() < 0.9


def test_lung_opacity_fills_one_lung_on_either_side(
    finding_zones: dict[str, dict[str, np.ndarray]],
) -> None:
    # Given the lung opacity findings of many phantoms
    opacity = finding_zones["lung_opacity"]

    # When their split between the lungs is summarised
    # Then each image has a single unilateral consolidation, and it is the densest finding
    assert opacity["larger_lung_share"].min() > 0.95
    assert opacity["lung_mean"].mean() > finding_zones["covid"]["lung_mean"].mean()


@pytest.mark.parametrize("label", FINDING_CLASSES)
def test_difficulty_scales_the_strength_of_findings(label: str) -> None:
    # Given the same phantoms rendered at increasing difficulty
    strengths = []
    for difficulty in (0.0, 0.5, 1.0):
        # When the extra brightness over the paired normal image is measured
        total = sum(
            np.clip(_finding_map(label, seed, difficulty)[1], 0, None).sum() for seed in range(8)
        )
        strengths.append(total)

    # Then findings are present even when subtle, and grow with difficulty
    assert 0 < strengths[0] < strengths[1] < strengths[2]


def test_classes_are_learnable_from_pixels_but_not_from_mean_intensity(tmp_path: Path) -> None:
    # scikit-learn is only needed for this check, not by the generator itself.
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Given 60 phantoms per class at the default difficulty, written to and read from disk
    per_class = 60
    write_phantom_dataset(tmp_path, dict.fromkeys(PHANTOM_CLASSES, per_class), SMALL, 0.5, seed=0)
    images, labels = [], []
    for class_index, label in enumerate(PHANTOM_CLASSES):
        for path in sorted((tmp_path / label).glob("*.png")):
            with Image.open(path) as png:
                images.append(np.asarray(png, dtype=float) / 255.0)
            labels.append(class_index)
    stack, target = np.stack(images), np.array(labels)
    pixels = stack.reshape(len(stack), 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(stack), -1)
    global_mean = stack.mean(axis=(1, 2))[:, None]

    # When a linear classifier is cross-validated on 16x16 pixels and on the global mean alone
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)

    def accuracy(features: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        return float(cross_val_score(model, features, target, cv=folds).mean())

    pixel_accuracy, mean_accuracy = accuracy(pixels), accuracy(global_mean)

    # Then pixels beat chance (0.25) clearly while overall brightness says little
    assert pixel_accuracy > 0.6, pixel_accuracy
    assert mean_accuracy < 0.4, mean_accuracy


# sha256 of the first phantom of each class at the default size, seed and difficulty, in the
# generator's narrow pose (positioning 1) and params.yaml's wider one (3). They are the same on
# every CPU and NumPy/Pillow build (portable_math, stored PNG blocks), so a difference on
# another machine fails here instead of silently changing dvc.lock's data/raw.
PINNED_PHANTOM_DIGESTS = {
    1.0: {
        "covid/covid_00000.png": "a2b7ede64182d176401845f8323faab75536634badeff9b4e1c3a27cc37585c8",
        "lung_opacity/lung_opacity_00000.png": (
            "1ec30c3c75fadd3546b86a11229b2b3562bdc6d1ffc9a1daaf7db27697d5bb70"
        ),
        "normal/normal_00000.png": (
            "734e91d718d150b4add0aeefb971cef2ea0b60fde7683a84d8aaf59703ded73b"
        ),
        "viral_pneumonia/viral_pneumonia_00000.png": (
            "54b275a111684a838a7822f60a07523496af65ce208872f6304547a6a3817b16"
        ),
    },
    3.0: {
        "covid/covid_00000.png": "2854c3235f05fbe30c012ff0f119d722e5f2ff155f313666511e7b840f94caac",
        "lung_opacity/lung_opacity_00000.png": (
            "3e82967d66277f28581c82f86a6160b95e4925c69468998975746e9b7f585194"
        ),
        "normal/normal_00000.png": (
            "4f9696308edc906f455edd2594eae03e83f9f4bbb991a174a1d0b4f0b9cba212"
        ),
        "viral_pneumonia/viral_pneumonia_00000.png": (
            "fd3fe6dc772d7d414e53640ae8bcd433fca9db68a5b48bfee7f29aa9cf7fe582"
        ),
    },
}


@pytest.mark.parametrize("positioning", sorted(PINNED_PHANTOM_DIGESTS))
def test_phantom_bytes_are_pinned(tmp_path: Path, positioning: float) -> None:
    # Given one phantom of each class at the default size (128), difficulty 0.5 and seed 42
    counts = {label: 1 for label in PHANTOM_CLASSES}
    write_phantom_dataset(tmp_path, counts, 128, 0.5, seed=42, positioning=positioning)

    # Then their bytes are exactly the pinned ones
    assert _tree_digests(tmp_path) == PINNED_PHANTOM_DIGESTS[positioning]


@pytest.mark.skipif(
    not dispatched_features(),
    reason="this CPU has no SIMD targets NumPy dispatches to, so there is no other path to compare",
)
def test_phantoms_are_bit_identical_with_numpy_simd_dispatch_turned_off(tmp_path: Path) -> None:
    # Given phantoms written here (NumPy free to use AVX2 / AVX-512 loops), in params.yaml's pose
    counts = {label: 3 for label in PHANTOM_CLASSES}
    write_phantom_dataset(tmp_path / "here", counts, 96, 0.5, seed=7, positioning=3.0)

    # When the same phantoms are written where NumPy may only use its baseline loops
    elsewhere = tmp_path / "elsewhere"
    run_without_dispatch(
        "from pathlib import Path\n"
        "from cxr.ingestion.phantoms import write_phantom_dataset\n"
        f"write_phantom_dataset(Path({str(elsewhere)!r}), {counts!r}, 96, 0.5, 7, positioning=3)\n"
    )

    # Then every file has the same bytes, as on another CPU
    assert _tree_digests(tmp_path / "here") == _tree_digests(elsewhere)


def test_several_processes_write_the_same_bytes_as_one(tmp_path: Path) -> None:
    # Given enough phantoms that two processes share the work
    counts = {"covid": 50, "normal": 50, "lung_opacity": 40}

    # When they are written by one process and by two
    write_phantom_dataset(tmp_path / "one", counts, MIN_SIZE_FOR_SPEED, 0.5, seed=3, workers=1)
    written = write_phantom_dataset(
        tmp_path / "two", counts, MIN_SIZE_FOR_SPEED, 0.5, seed=3, workers=2
    )

    # Then the counts and every file's bytes agree
    assert written == counts
    assert _tree_digests(tmp_path / "one") == _tree_digests(tmp_path / "two")


def test_exposure_is_another_scanners_gain_and_one_keeps_the_default_bytes() -> None:
    # Given one patient drawn at the default exposure, at 1.0 explicitly, and brighter
    def draw(exposure: float | None) -> np.ndarray:
        rng = np.random.default_rng([2026, 0, 3])
        if exposure is None:
            return render_phantom("covid", rng, 64, 0.5)
        return render_phantom("covid", rng, 64, 0.5, exposure)

    default, same, brighter = draw(None), draw(1.0), draw(1.3)

    # Then 1.0 is the default bytes, and a higher gain brightens the same anatomy
    np.testing.assert_array_equal(default, same)
    assert brighter.mean() > default.mean() * 1.15
    assert np.corrcoef(default.ravel(), brighter.ravel())[0, 1] > 0.95
    with pytest.raises(ValueError, match="exposure must be in"):
        render_phantom("covid", np.random.default_rng(0), 64, 0.5, 0.0)


def _intensity_centroids(positioning: float, patients: int = 16) -> np.ndarray:
    """(x, y) intensity centroid of `patients` normal phantoms drawn at that pose spread."""
    rows, columns = np.indices((SMALL, SMALL))
    centroids = []
    for index in range(patients):
        rng = np.random.default_rng([5, 1, index])
        image = render_phantom("normal", rng, SMALL, 0.5, positioning=positioning).astype(float)
        centroids.append(np.array([(image * columns).sum(), (image * rows).sum()]) / image.sum())
    return np.array(centroids)


def test_positioning_one_keeps_the_default_bytes_and_wider_moves_the_patients_more() -> None:
    # Given the same patients drawn at the default pose spread, at 1.0 explicitly, and 3x wider
    rng_default, rng_one = np.random.default_rng([2026, 0, 3]), np.random.default_rng([2026, 0, 3])
    default = render_phantom("covid", rng_default, SMALL, 0.5)
    one = render_phantom("covid", rng_one, SMALL, 0.5, positioning=1.0)

    # Then 1.0 is the default bytes, and at 3 the chest wanders over the grid about 2.5x as far
    np.testing.assert_array_equal(default, one)
    spread_one = _intensity_centroids(1.0).std(axis=0)
    spread_three = _intensity_centroids(3.0).std(axis=0)
    assert np.all(spread_three > 1.8 * spread_one), (spread_one, spread_three)
    with pytest.raises(ValueError, match=r"positioning must be in \[0, 4\]"):
        render_phantom("covid", np.random.default_rng(0), SMALL, 0.5, positioning=4.5)
    with pytest.raises(ValueError, match="positioning must be in"):
        write_phantom_dataset(Path("unused"), {"covid": 1}, SMALL, 0.5, seed=0, positioning=-1.0)


def test_a_wider_pose_spread_takes_the_pixel_shortcut_away(tmp_path: Path) -> None:
    # scikit-learn is only needed for this check, not by the generator itself.
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Given 60 phantoms of each default class at pose spreads 1 and 3
    classes = ("covid", "normal", "viral_pneumonia")

    def linear_pixel_accuracy(positioning: float) -> float:
        root = tmp_path / str(positioning)
        counts = dict.fromkeys(classes, 60)
        write_phantom_dataset(root, counts, SMALL, 0.5, seed=0, positioning=positioning)
        images = [
            np.asarray(Image.open(path), dtype=float) / 255.0
            for label in classes
            for path in sorted((root / label).glob("*.png"))
        ]
        stack, target = np.stack(images), np.repeat(np.arange(len(classes)), 60)
        pixels = stack.reshape(len(stack), 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(stack), -1)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
        return float(cross_val_score(model, pixels, target, cv=folds).mean())

    # When a linear classifier is cross-validated on 16x16 pixels of each
    fixed, spread = linear_pixel_accuracy(1.0), linear_pixel_accuracy(3.0)

    # Then the findings' fixed place gives it away at 1 (0.98 measured) and much less at 3 (0.63)
    assert fixed > 0.9, fixed
    assert spread < fixed - 0.2, (fixed, spread)
