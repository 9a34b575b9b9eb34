"""Build's figures per view position and manufacturer, by class (cxr/images/exploration.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.images.exploration import draw_exploration, header_counts


def _images(views: list[str], manufacturers: list[str]) -> pd.DataFrame:
    labels = ["covid", "covid", "normal", "normal", "normal"]
    return pd.DataFrame(
        {
            "label": labels,
            "width": 64,
            "height": 64,
            "view_position": views,
            "manufacturer": manufacturers,
        }
    )


def test_counts_per_view_and_class_most_common_first() -> None:
    images = _images(["AP", "AP", "PA", "PA", ""], ["A", "A", "B", "B", "B"])
    counts = header_counts(images, "view_position")
    assert counts.to_dict("index") == {
        "AP": {"covid": 2, "normal": 0},
        "PA": {"covid": 0, "normal": 2},
        "(none)": {"covid": 0, "normal": 1},
    }
    assert list(header_counts(images, "manufacturer").index) == ["B", "A"]


def test_dicom_images_get_view_and_manufacturer_figures(tmp_path: Path) -> None:
    images = _images(["AP", "AP", "PA", "PA", "PA"], ["A", "A", "B", "B", "B"])
    draw_exploration(images, {"covid": np.ones(4), "normal": np.ones(4)}, tmp_path)
    assert (tmp_path / "view_positions.png").stat().st_size > 0
    assert (tmp_path / "manufacturers.png").stat().st_size > 0


def test_png_images_get_the_figures_they_always_had(tmp_path: Path) -> None:
    # Given images without DICOM headers: blank columns, or none at all (an older table)
    for images in (_images([""] * 5, [""] * 5), _images([""] * 5, [""] * 5).iloc[:, :3]):
        figures = tmp_path / str(len(images.columns))
        draw_exploration(images, {"covid": np.ones(4), "normal": np.ones(4)}, figures)
        assert sorted(path.name for path in figures.iterdir()) == [
            "class_counts.png",
            "image_sizes.png",
            "intensity_histograms.png",
        ]
