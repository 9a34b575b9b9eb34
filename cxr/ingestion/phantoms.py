"""Deterministic chest-radiograph-like phantoms: the pipeline's embedded default dataset.

Every image is drawn in "anatomical" coordinates (u to the image's right, v downwards,
both roughly in [-1, 1]) which are mapped onto the pixel grid through a random pose, so
the anatomy, the findings and the lung masks that confine the findings all move together.

X-ray convention: air is dark, soft tissue grey, bone bright; an opacity (fluid, cells)
attenuates more than aerated lung, so every finding *adds* brightness inside the lungs.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from cxr.core.processes import available_cores, map_in_processes
from cxr.core.progress import track
from cxr.core.registry import PHANTOM_CLASSES
from cxr.ingestion.portable_math import arctan2, cos, exp, expit, hypot, power, sin

MIN_IMAGE_SIZE = 32

# The pose spread's upper bound: at 4 a patient is shifted up to 12% of the side, tilted up to
# 28 degrees and scaled 0.71-1.27, about as far as a chest still fits the film.
MAX_POSITIONING = 4.0

# Below this many images per extra process, starting it costs more than it saves.
IMAGES_PER_WORKER_START = 64

# Anatomy is laid out for this resolution; pixel-valued parameters (blur, texture
# scales) are rescaled from it so an image looks the same at any size.
REFERENCE_SIZE = 128

# A lung's (centre u, centre v, half-width, half-height); lungs paired with their side (-1 for
# the patient's right lung, on the image's left; 1 for the left).
Lung = tuple[float, float, float, float]
LungsBySide = tuple[tuple[Lung, int], ...]

# Nominal lung geometry. The image's left is the patient's right lung, slightly larger because
# the heart takes room on the other side.
RIGHT_LUNG: Lung = (-0.4, 0.01, 0.33, 0.7)
LEFT_LUNG: Lung = (0.4, 0.03, 0.31, 0.67)

# Base intensities in [0, 1] before the random brightness / contrast are applied.
BACKGROUND_LEVEL = 0.04
SOFT_TISSUE_LEVEL = 0.46
LUNG_DARKENING = 0.29

# Finding amplitudes as (at difficulty 0, at difficulty 1); difficulty interpolates linearly.
COVID_AMPLITUDE = (0.05, 0.24)
VIRAL_HAZE_AMPLITUDE = (0.04, 0.14)
VIRAL_STREAK_AMPLITUDE = (0.03, 0.1)
OPACITY_AMPLITUDE = (0.05, 0.24)


def render_phantom(
    label: str,
    rng: np.random.Generator,
    image_size: int,
    difficulty: float,
    exposure: float = 1.0,
    positioning: float = 1.0,
) -> np.ndarray:
    """Return one grayscale uint8 (image_size, image_size) phantom with the findings of `label`.

    `exposure` multiplies every intensity before the 8-bit rounding: another scanner's gain.
    `positioning` widens the random pose (shift, rotation, scale) by that factor: patients
    placed less consistently, so a finding moves around the pixel grid.
    """
    _check_label(label)
    _check_image_size(image_size)
    _check_difficulty(difficulty)
    _check_exposure(exposure)
    _check_positioning(positioning)

    # Three independent streams drawn up front: pose/anatomy and noise never depend on the
    # label, so for one rng state every class shares the exact same patient and nuisances
    # and only the findings differ (the class cannot leak through the nuisance variables).
    anatomy_seed, finding_seed, noise_seed = rng.integers(0, 2**63, size=3, dtype=np.uint64)
    anatomy_rng = np.random.default_rng(int(anatomy_seed))
    finding_rng = np.random.default_rng(int(finding_seed))
    noise_rng = np.random.default_rng(int(noise_seed))

    u, v = _posed_coordinates(anatomy_rng, image_size, positioning)
    image, lungs = _draw_anatomy(u, v, anatomy_rng)
    image = image + _draw_findings(label, u, v, lungs, finding_rng, image_size, difficulty)
    return _acquire(image, noise_rng, image_size, exposure)


def write_phantom_dataset(
    target_dir: Path,
    counts: Mapping[str, int],
    image_size: int,
    difficulty: float,
    seed: int,
    workers: int = 1,
    exposure: float = 1.0,
    positioning: float = 1.0,
) -> dict[str, int]:
    """Write counts[label] PNGs as target_dir/<label>/<label>_<index:05d>.png; return the counts.

    `workers` processes draw them (0 = one per core); the bytes are the same for any number.
    `exposure` is the detector gain and `positioning` the spread of the pose (render_phantom);
    1.0 for both gives the pinned bytes.
    """
    # Validate everything before writing anything so a bad call leaves no partial dataset.
    check_dataset_request(counts, image_size, difficulty, seed, exposure, positioning)

    target_dir = Path(target_dir)
    jobs: list[tuple[Path, str, int, int]] = []
    written: dict[str, int] = {}
    for class_index, label in enumerate(PHANTOM_CLASSES):
        if label not in counts:
            continue
        written[label] = int(counts[label])
        if written[label]:
            (target_dir / label).mkdir(parents=True, exist_ok=True)
        jobs.extend(
            (target_dir / label / f"{label}_{index:05d}.png", label, class_index, index)
            for index in range(written[label])
        )
    # Each image has its own generator, so the bytes do not depend on which process draws it
    # or in what order; small datasets stay in this process (a worker takes a second to start).
    draw = functools.partial(
        _write_one_phantom,
        image_size=image_size,
        difficulty=difficulty,
        seed=int(seed),
        exposure=float(exposure),
        positioning=float(positioning),
    )
    write_in_processes(draw, jobs, workers, "cxr.ingestion.phantoms", "phantoms")
    return written


def write_in_processes(
    write: Callable[[Any], Any], jobs: Sequence[Any], workers: int, module: str, what: str
) -> None:
    """Run `write` on every job, in up to `workers` processes (0: one per core), with progress.

    Small datasets stay in this process (a worker takes a second to start); `module` is
    imported in each worker first.
    """
    workers = min(workers or available_cores(), len(jobs) // IMAGES_PER_WORKER_START)
    done = map_in_processes(write, jobs, workers, preload=[module])
    for _ in track(done, what, "images", total=len(jobs)):
        pass


def _write_one_phantom(
    job: tuple[Path, str, int, int],
    image_size: int,
    difficulty: float,
    seed: int,
    exposure: float = 1.0,
    positioning: float = 1.0,
) -> None:
    path, label, class_index, index = job
    pixels = draw_phantom(
        label, class_index, index, image_size, difficulty, seed, exposure, positioning
    )
    _write_png_atomically(path, pixels)


def draw_phantom(
    label: str,
    class_index: int,
    index: int,
    image_size: int,
    difficulty: float,
    seed: int,
    exposure: float = 1.0,
    positioning: float = 1.0,
) -> np.ndarray:
    """The uint8 pixels of phantom number `index` of a class, as write_phantom_dataset draws it."""
    # One generator per image keyed by (seed, class, index): an image's bytes do not depend on
    # how many images of other classes (or before it) were requested.
    rng = np.random.default_rng([seed, class_index, index])
    return render_phantom(label, rng, image_size, difficulty, exposure, positioning)


def check_dataset_request(
    counts: Mapping[str, int],
    image_size: int,
    difficulty: float,
    seed: int,
    exposure: float,
    positioning: float,
) -> None:
    """Raise ValueError, naming the argument, when a dataset of phantoms cannot be drawn so."""
    for label, count in counts.items():
        _check_label(label)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"counts[{label!r}] must be an integer >= 0, got {count!r}")
    _check_image_size(image_size)
    _check_difficulty(difficulty)
    _check_exposure(exposure)
    _check_positioning(positioning)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _check_label(label: str) -> None:
    if label not in PHANTOM_CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of: {', '.join(PHANTOM_CLASSES)}")


def _check_image_size(image_size: int) -> None:
    valid_type = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not valid_type or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def _check_difficulty(difficulty: float) -> None:
    # Written so that NaN also fails the range test.
    if isinstance(difficulty, bool) or not (0.0 <= difficulty <= 1.0):
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")


def _check_exposure(exposure: float) -> None:
    # Written so that NaN also fails the range test.
    if isinstance(exposure, bool) or not (0.0 < exposure <= 4.0):
        raise ValueError(f"exposure must be in (0, 4], got {exposure!r}")


def _check_positioning(positioning: float) -> None:
    # Written so that NaN also fails the range test.
    if isinstance(positioning, bool) or not (0.0 <= positioning <= MAX_POSITIONING):
        raise ValueError(f"positioning must be in [0, {MAX_POSITIONING:g}], got {positioning!r}")


def _write_png_atomically(path: Path, pixels: np.ndarray) -> None:
    # Encode in memory, then write a temp file beside the target and rename it over the
    # target, so readers (or a killed run) never see a half-written PNG.
    buffer = io.BytesIO()
    # No pnginfo/metadata is passed, so the bytes depend on the pixels only. Stored (level 0)
    # deflate blocks: Pillow's zlib-ng picks its match finder by CPU at run time, so compressed
    # bytes could differ between machines; stored blocks cannot (about 1.4x the size).
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    write_bytes_atomically(path, buffer.getvalue())


def write_bytes_atomically(path: Path, content: bytes) -> None:
    """Write `content` to a temp file beside `path`, then rename it over `path`."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _lerp(bounds: tuple[float, float], t: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * t


def _soft_inside(level: np.ndarray, edge: float) -> np.ndarray:
    """Map an implicit shape function (< 1 inside) to a soft 0..1 mask."""
    return expit((1.0 - level) / edge)


def _posed_coordinates(
    rng: np.random.Generator, size: int, positioning: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical (u, v) of every pixel under a random rotation, translation and scale.

    `positioning` stretches each draw away from the centre of its range (the same draws, so a
    patient keeps its direction of tilt and shift); at 1.0 the arithmetic is skipped entirely.
    """
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(centres, centres, indexing="ij")
    angle = rng.uniform(-7.0, 7.0) * (np.pi / 180.0)
    shift_x, shift_y = rng.uniform(-0.06, 0.06, size=2)
    scale = rng.uniform(0.92, 1.06)
    if positioning != 1.0:
        angle, shift_x, shift_y = angle * positioning, shift_x * positioning, shift_y * positioning
        scale = 0.99 + (scale - 0.99) * positioning
    # Inverse mapping (pixel -> anatomy) so every shape can be evaluated on the pixel grid.
    dx, dy = x - shift_x, y - shift_y
    cos_angle, sin_angle = cos(angle), sin(angle)
    u = (cos_angle * dx + sin_angle * dy) / scale
    v = (-sin_angle * dx + cos_angle * dy) / scale
    # float64 throughout: cxr.ingestion.portable_math computes in float64 so every CPU rounds alike.
    return u, v


def _lung_mask(u: np.ndarray, v: np.ndarray, lung: Lung, side: int) -> np.ndarray:
    """Soft mask of one lung field: narrow apex, straight-ish lateral wall, domed base."""
    cu, cv, half_w, half_h = lung
    du, dv = u - cu, v - cv
    # Wider towards the base, like a real lung; the medial border is flattened by the
    # mediastinum so the shape is not a plain ellipse.
    width = half_w * (1.0 + 0.22 * np.clip(dv / half_h, -1.0, 1.0))
    medial = np.where(du * side < 0, 1.25, 1.0)
    level = np.sqrt((du * medial / width) ** 2 + (dv / half_h) ** 2)
    inside = _soft_inside(level, 0.03)
    # Diaphragm dome: highest mid-lung, lower at the sides (sharp costophrenic angles).
    dome = cv + 0.88 * half_h - 0.2 * (1.0 - np.clip((du / half_w) ** 2, 0.0, 1.0))
    below_dome = expit((dome - v) / 0.012)
    return inside * below_dome


def _draw_anatomy(
    u: np.ndarray, v: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Body, lungs, mediastinum, heart, spine, ribs and clavicles; returns (image, lung mask)."""
    # Body: sloping shoulders on top, flanks near the image edges, plus the neck.
    shoulder_top = -0.84 + 0.5 * power(np.clip(np.abs(u) - 0.25, 0.0, None), 1.5)
    flank = 0.92 + 0.06 * v
    torso = expit((v - shoulder_top) / 0.03) * expit((flank - np.abs(u)) / 0.02)
    neck = expit((0.22 - np.abs(u)) / 0.02)
    body = np.maximum(torso, neck)
    # Less tissue is crossed near the flanks than through the middle of the chest.
    thickness = 1.0 - 0.3 * np.clip((np.abs(u) - 0.5) / 0.45, 0.0, 1.0)
    image = BACKGROUND_LEVEL + body * SOFT_TISSUE_LEVEL * thickness

    # Per-patient anatomy variation (inspiration depth, heart size), same for every class.
    lung_stretch = rng.uniform(0.93, 1.05)
    right_lung = _jitter_lung(RIGHT_LUNG, rng, lung_stretch)
    left_lung = _jitter_lung(LEFT_LUNG, rng, lung_stretch)
    heart_u, heart_v = 0.12 + rng.uniform(-0.03, 0.03), 0.33 + rng.uniform(-0.03, 0.03)
    heart_w, heart_h = 0.36 * rng.uniform(0.9, 1.12), 0.27 * rng.uniform(0.92, 1.08)

    heart_level = np.sqrt(((u - heart_u) / heart_w) ** 2 + ((v - heart_v) / heart_h) ** 2)
    heart = _soft_inside(heart_level, 0.05)
    knob_level = hypot(u - 0.11, v + 0.32) / 0.08
    aortic_knob = _soft_inside(knob_level, 0.12)
    mediastinum = expit((0.12 - np.abs(u + 0.01)) / 0.025)

    lungs = np.maximum(_lung_mask(u, v, right_lung, -1), _lung_mask(u, v, left_lung, 1))
    # The heart and great vessels overlap the medial lung: keep lung only where they are not.
    lungs = lungs * (1.0 - heart) * (1.0 - aortic_knob) * body
    # Aerated lung is darkest in its middle; the apex and base have more tissue over them.
    lung_depth = 1.0 - 0.3 * np.clip(np.abs(v + 0.02) / 0.68, 0.0, 1.0) ** 2
    image = image - LUNG_DARKENING * lungs * lung_depth

    cardiomediastinal = np.maximum(np.maximum(mediastinum, heart), aortic_knob)
    image = image + 0.1 * cardiomediastinal * body
    # Below the diaphragm (liver / stomach) the abdomen is a little denser.
    abdomen = expit((v - 0.55) / 0.06) * body * (1.0 - np.maximum(lungs, heart))
    image = image + 0.04 * abdomen

    image = image + _draw_spine(u, v, body)
    # Ribs behind the dense heart and mediastinum barely show on a PA film.
    image = image + _draw_ribs(u, v, rng, body) * (1.0 - 0.65 * cardiomediastinal)
    image = image + _draw_clavicles(u, v, rng)
    image = image + _vascular_markings(u, v, lungs, right_lung, left_lung, rng)
    return image, lungs


def _jitter_lung(lung: Lung, rng: np.random.Generator, stretch: float) -> Lung:
    cu, cv, half_w, half_h = lung
    return (
        cu + rng.uniform(-0.02, 0.02),
        cv + rng.uniform(-0.02, 0.02),
        half_w * rng.uniform(0.95, 1.05),
        half_h * stretch,
    )


def _draw_spine(u: np.ndarray, v: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Bright vertical band with faint vertebral segmentation."""
    band = expit((0.06 - np.abs(u)) / 0.012)
    segments = 0.75 + 0.25 * cos(2.0 * np.pi * v / 0.13) ** 2
    return 0.06 * band * segments * body


def _draw_ribs(
    u: np.ndarray, v: np.ndarray, rng: np.random.Generator, body: np.ndarray
) -> np.ndarray:
    """Posterior ribs as thick curved arcs from the spine outwards, plus fainter anterior ribs."""
    n_ribs = 10
    first = -0.8 + rng.uniform(-0.03, 0.03)
    spacing = 0.13 * rng.uniform(0.95, 1.05)

    lateral = np.abs(u) - 0.06
    along = np.clip(lateral, 0.0, None)
    # Posterior ribs rise briefly from the spine then sweep down towards the chest wall.
    # All ribs share this curve up to a vertical offset, so each pixel only needs the
    # distance to its nearest rib (one pass instead of one pass per rib).
    posterior_distance = _distance_to_nearest_rib(
        v - (-0.14 * along + 0.8 * along**2), first, spacing, n_ribs
    )
    half_thickness = 0.022 + 0.014 * along
    distance = posterior_distance / half_thickness
    # Bright cortex at the edges, slightly less dense medulla: reads as a bone rather than a line.
    profile = expit((1.0 - distance) / 0.15) * (0.7 + 0.3 * np.clip(distance, 0.0, 1.0) ** 2)
    posterior = profile * expit(lateral / 0.015) * expit((0.86 - np.abs(u)) / 0.03)

    # Anterior ribs run the other way (down towards the sternum) and are faint on a PA film.
    anterior_curve = 0.2 - 0.5 * power(0.8 - np.clip(lateral, 0.0, 0.8), 1.5)
    anterior_distance = _distance_to_nearest_rib(v - anterior_curve, first, spacing, n_ribs) / 0.03
    anterior_extent = expit((lateral - 0.2) / 0.03) * expit((0.84 - np.abs(u)) / 0.03)
    anterior = expit((1.0 - anterior_distance) / 0.2) * anterior_extent

    # The rib cage ends a little below the diaphragm; lower down there is only abdomen.
    cage = expit((0.7 - v) / 0.06)
    return (0.065 * posterior + 0.025 * anterior) * body * cage


def _distance_to_nearest_rib(
    offset: np.ndarray, first: float, spacing: float, count: int
) -> np.ndarray:
    """Vertical distance from `offset` to the nearest of `count` evenly spaced rib offsets."""
    nearest = np.clip(np.rint((offset - first) / spacing), 0, count - 1)
    return np.abs(offset - (first + nearest * spacing))


def _draw_clavicles(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two bright S-ish bars across the top of the chest."""
    height = -0.68 + rng.uniform(-0.04, 0.04)
    along = np.abs(u)
    centre = height - 0.12 * (along - 0.12) + 0.25 * (along - 0.35) ** 2
    distance = np.abs(v - centre) / 0.032
    extent = expit((along - 0.09) / 0.02) * expit((0.62 - along) / 0.03)
    return 0.13 * expit((1.0 - distance) / 0.15) * extent


def _hilum(lung: Lung, side: int) -> tuple[float, float]:
    """Hilum position of a lung: medial third, just above mid-height."""
    cu, cv, half_w, half_h = lung
    return cu - side * 0.5 * half_w, cv + 0.02 * half_h


def _radial_streaks(
    u: np.ndarray,
    v: np.ndarray,
    origin: tuple[float, float],
    angles: np.ndarray,
    lengths: np.ndarray,
    width: float,
) -> np.ndarray:
    """Thin tapering line segments from `origin` along `angles` (max, not sum, where they meet)."""
    result = np.zeros_like(u)
    # Only pixels within reach of the longest streak can be touched: evaluate just those.
    reach = hypot(u - origin[0], v - origin[1]) < lengths.max() + 3.0 * width
    du, dv = u[reach] - origin[0], v[reach] - origin[1]
    angles = (angles + np.pi) % (2.0 * np.pi) - np.pi  # same range as arctan2, for the search
    order = np.argsort(angles)
    angles, lengths = angles[order], lengths[order]
    # Away from the origin a pixel is only near the streaks either side of it in angle, so
    # evaluating those two is enough (and much cheaper than one pass per streak).
    after = np.searchsorted(angles, arctan2(dv, du)) % len(angles)
    nearby = np.zeros_like(du)
    for candidate in (after, (after - 1) % len(angles)):
        direction_u, direction_v = cos(angles[candidate]), sin(angles[candidate])
        length = lengths[candidate]
        along = np.clip(du * direction_u + dv * direction_v, 0.0, length)
        across = hypot(du - along * direction_u, dv - along * direction_v)
        # Fade in over the first few hundredths and taper outwards, like branching vessels.
        taper = (1.0 - 0.7 * along / length) * np.clip(along / 0.06, 0.0, 1.0)
        nearby = np.maximum(nearby, exp(-((across / (width * (0.3 + taper))) ** 2)) * taper)
    result[reach] = nearby
    return result


def _side_angles(rng: np.random.Generator, side: int, count: int) -> np.ndarray:
    """Angles pointing from a hilum out into its lung (laterally, up and down)."""
    spread = rng.uniform(-1.25, 1.25, size=count)
    return np.where(side > 0, 0.0, np.pi) + side * spread


def _vascular_markings(
    u: np.ndarray,
    v: np.ndarray,
    lungs: np.ndarray,
    right_lung: Lung,
    left_lung: Lung,
    rng: np.random.Generator,
) -> np.ndarray:
    """Normal hilar shadows and faint bronchovascular lines, present in every class."""
    markings = np.zeros_like(u)
    for lung, side in ((right_lung, -1), (left_lung, 1)):
        hu, hv = _hilum(lung, side)
        markings += 0.05 * exp(-(((u - hu) / 0.07) ** 2 + ((v - hv) / 0.11) ** 2))
        angles = _side_angles(rng, side, 7)
        lengths = rng.uniform(0.2, 0.4, size=7)
        markings += 0.035 * _radial_streaks(u, v, (hu, hv), angles, lengths, 0.012)
    return markings * lungs


def _texture(
    rng: np.random.Generator,
    size: int,
    sigma_px: float,
    strength: float,
    bounds: tuple[float, float],
) -> np.ndarray:
    """A smooth random density factor around 1, clipped to bounds, so opacities are not flat.

    1 + strength times a zero-mean, unit-ish-std field of blobs about sigma_px pixels wide (at
    REFERENCE_SIZE).
    """
    field = ndimage.gaussian_filter(
        rng.standard_normal((size, size)), sigma_px * size / REFERENCE_SIZE
    )
    field = field / (field.std() + 1e-12)
    return np.clip(1.0 + strength * field, *bounds)


def _draw_findings(
    label: str,
    u: np.ndarray,
    v: np.ndarray,
    lungs: np.ndarray,
    rng: np.random.Generator,
    size: int,
    difficulty: float,
) -> np.ndarray:
    """Extra attenuation caused by the class' findings, confined to the lung mask."""
    if label == "normal":
        return np.zeros_like(u)
    # The nominal (un-jittered) lungs are enough to place findings; the mask keeps them inside.
    lungs_by_side: LungsBySide = ((RIGHT_LUNG, -1), (LEFT_LUNG, 1))
    if label == "covid":
        findings = _covid(u, v, lungs_by_side, rng, size, difficulty)
    elif label == "viral_pneumonia":
        findings = _viral_pneumonia(u, v, lungs_by_side, rng, size, difficulty)
    else:
        findings = _lung_opacity(u, v, lungs_by_side, rng, size, difficulty)
    # Cut the mask's soft tails so nothing at all is drawn outside the lungs (only the
    # detector blur then spreads a finding's edge by a pixel or two).
    return findings * np.where(lungs > 0.02, lungs, 0.0)


def _covid(
    u: np.ndarray,
    v: np.ndarray,
    lungs_by_side: LungsBySide,
    rng: np.random.Generator,
    size: int,
    difficulty: float,
) -> np.ndarray:
    """Bilateral, peripheral, lower-zone ground-glass patches."""
    amplitude = _lerp(COVID_AMPLITUDE, difficulty)
    patches = np.zeros_like(u)
    for (cu, cv, half_w, half_h), side in lungs_by_side:
        for _ in range(rng.integers(2, 5)):
            # Lateral 45-95 % of the half-width, lower half of the lung height.
            pu = cu + side * rng.uniform(0.45, 0.95) * half_w * 1.1
            pv = cv + rng.uniform(0.05, 0.6) * half_h
            ru, rv = rng.uniform(0.1, 0.17), rng.uniform(0.12, 0.22)
            level = np.sqrt(((u - pu) / ru) ** 2 + ((v - pv) / rv) ** 2)
            patches = np.maximum(patches, rng.uniform(0.7, 1.0) * _soft_inside(level, 0.25))
    # Ground glass is hazy and mottled, not uniformly dense.
    mottle = _texture(rng, size, 2.5, 0.3, (0.3, 1.6))
    return amplitude * patches * mottle


def _viral_pneumonia(
    u: np.ndarray,
    v: np.ndarray,
    lungs_by_side: LungsBySide,
    rng: np.random.Generator,
    size: int,
    difficulty: float,
) -> np.ndarray:
    """Diffuse perihilar haze with fine streaks radiating from both hila."""
    haze_amplitude = _lerp(VIRAL_HAZE_AMPLITUDE, difficulty)
    streak_amplitude = _lerp(VIRAL_STREAK_AMPLITUDE, difficulty)
    findings = np.zeros_like(u)
    for lung, side in lungs_by_side:
        hu, hv = _hilum(lung, side)
        hu += rng.uniform(-0.03, 0.03)
        hv += rng.uniform(-0.05, 0.05)
        spread_u, spread_v = rng.uniform(0.17, 0.24), rng.uniform(0.22, 0.3)
        haze = exp(-(((u - hu) / spread_u) ** 2 + ((v - hv) / spread_v) ** 2))
        count = int(rng.integers(10, 16))
        angles = _side_angles(rng, side, count)
        lengths = rng.uniform(0.2, 0.42, size=count)
        streaks = _radial_streaks(u, v, (hu, hv), angles, lengths, 0.014)
        findings += haze_amplitude * haze + streak_amplitude * streaks
    # Interstitial pattern: fine reticular texture strongest where the haze is.
    reticular = _texture(rng, size, 1.0, 0.25, (0.5, 1.5))
    return findings * reticular


def _lung_opacity(
    u: np.ndarray,
    v: np.ndarray,
    lungs_by_side: LungsBySide,
    rng: np.random.Generator,
    size: int,
    difficulty: float,
) -> np.ndarray:
    """One dense, fairly uniform lobar consolidation in one zone of one lung."""
    amplitude = _lerp(OPACITY_AMPLITUDE, difficulty)
    (cu, cv, half_w, half_h), side = lungs_by_side[int(rng.integers(0, 2))]
    upper = bool(rng.integers(0, 2))
    # An oblique fissure-like boundary splits the lung into an upper and a lower zone.
    fissure = cv + rng.uniform(-0.1, 0.15) * half_h + side * rng.uniform(0.1, 0.35) * (u - cu)
    zone = expit(((fissure - v) if upper else (v - fissure)) / 0.025)
    # Restrict to this lung (the mask multiplies later, but the other lung must stay clear).
    region_level = np.sqrt(((u - cu) / (half_w * 1.3)) ** 2 + ((v - cv) / (half_h * 1.15)) ** 2)
    region = zone * _soft_inside(region_level, 0.04)
    texture = _texture(rng, size, 3.0, 0.1, (0.7, 1.3))
    return amplitude * rng.uniform(0.85, 1.0) * region * texture


def _acquire(
    image: np.ndarray, rng: np.random.Generator, size: int, exposure: float = 1.0
) -> np.ndarray:
    """Detector effects: slight blur, random brightness/contrast/gamma, noise, gain, 8-bit."""
    scale = size / REFERENCE_SIZE
    image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.0) * scale)
    image = power(np.clip(image, 0.0, 1.0), rng.uniform(0.85, 1.15))
    contrast = rng.uniform(0.8, 1.25)
    brightness = rng.normal(0.0, 0.05)
    image = (image - 0.35) * contrast + 0.35 + brightness
    image = image + rng.normal(0.0, rng.uniform(0.012, 0.035), size=image.shape)
    if exposure != 1.0:  # skipped at 1.0, so the default phantoms keep their pinned bytes
        image = image * exposure
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
