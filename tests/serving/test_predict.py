import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluation_fixtures import (
    NAMES,
    phantom_pixels,
    run_cxr_predict,
    sklearn_models_dir,
    write_project,
)
from PIL import Image

from cxr.images.decoding import decode_gray, resize_square
from cxr.models.loading import load_predictor
from cxr.models.pixels import CachedImages, load_split_pixels, resize_batch
from cxr.models.run_record import read_run_record, write_run_record
from cxr.serving.predict import image_files, main, predict_files


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained tiny CNN in models/ and a folder of new PNG and JPEG files, plus junk."""
    root = tmp_path_factory.mktemp("project")
    paths = write_project(root, epochs=8)
    test = pd.read_parquet(paths.split_table("test"))
    pixels = np.load(paths.pixel_cache)
    incoming = root / "incoming" / "ward"
    incoming.mkdir(parents=True)
    for index in test["cache_index"][:4]:
        Image.fromarray(pixels[index]).save(incoming / f"scan{index}.png")
    # a larger RGB JPEG of another image: decoded to gray and resized like the training images
    big = Image.fromarray(pixels[test["cache_index"].iloc[4]]).resize((96, 96)).convert("RGB")
    big.save(incoming / "scan_rgb.jpg", quality=95)
    (incoming / "notes.txt").write_text("not an image")
    (incoming / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return paths, test, root / "incoming"


def test_predict_prints_each_image_and_writes_a_csv_for_a_folder(project, tmp_path, capsys):
    paths, test, incoming = project
    csv = tmp_path / "out.csv"
    # when a folder is classified with the model in models/
    code = main([str(incoming), "--model", str(paths.models_dir), "--csv", str(csv)])
    # then every image file gets a line with its class and probabilities, the broken one a reason
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("scan" in line and "[covid " in line for line in lines) == 5
    assert any("broken.png: unreadable (" in line for line in lines)
    table = pd.read_csv(csv, keep_default_na=False)
    assert len(table) == 6 and "notes.txt" not in " ".join(table["path"])
    # the broken file's class and scores are empty cells, its reason in `error`
    broken = table[table["path"].str.endswith("broken.png")].iloc[0]
    assert broken["error"] and broken["class"] == "" and broken["p_covid"] == ""
    readable = table[table["error"] == ""]
    assert set(readable["class"]) <= set(NAMES)
    probabilities = readable[[f"p_{name}" for name in NAMES]].to_numpy(float)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_a_file_gets_the_same_probabilities_as_its_cached_pixels_in_evaluate(project, tmp_path):
    paths, test, incoming = project
    predictor = load_predictor(paths.models_dir)
    first = test["cache_index"].iloc[0]
    cached = load_split_pixels(paths.pixel_cache, [first], predictor.image_size)
    csv = tmp_path / "one.csv"
    assert main([str(incoming / "ward" / f"scan{first}.png"), "--csv", str(csv),
                 "--model", str(paths.model_file())]) == 0  # fmt: skip
    from_file = pd.read_csv(csv)[[f"p_{name}" for name in NAMES]].to_numpy(float)
    assert np.allclose(from_file, predictor.predict_proba(cached), atol=1e-4)


def test_gradcam_overlays_for_a_cnn_and_a_reason_for_sklearn(project, tmp_path, capsys):
    paths, test, incoming = project
    out = tmp_path / "cams"
    files = [str(incoming / "ward" / "scan_rgb.jpg"), str(incoming / "ward" / "broken.png")]
    assert main([*files, "--model", str(paths.models_dir), "--gradcam", str(out)]) == 0
    assert [path.name for path in out.iterdir()] == ["scan_rgb.jpg.gradcam.png"]
    assert Image.open(out / "scan_rgb.jpg.gradcam.png").format == "PNG"
    # a scikit-learn model has no feature map: said, not failed
    pixels = np.load(paths.pixel_cache)
    train = pd.read_parquet(paths.split_table("train"))
    labels = train["label"].map({name: i for i, name in enumerate(NAMES)}).to_numpy()
    models = sklearn_models_dir(tmp_path / "baseline", pixels[train["cache_index"]], labels)
    capsys.readouterr()
    assert main([files[0], "--model", str(models), "--gradcam", str(tmp_path / "none")]) == 0
    output = capsys.readouterr().out
    assert "Grad-CAM unavailable for this model" in output and "scan_rgb.jpg:" in output


def test_gradcam_overlays_of_same_named_images_in_subfolders_never_overwrite_each_other(
    project, tmp_path, capsys
):
    # given a folder as the COVID-19 Radiography Database ships it: the same file name in two
    # class folders, and two files with one stem in the same folder
    paths, test, _ = project
    pixels = np.load(paths.pixel_cache)
    scans = tmp_path / "scans"
    chosen = {
        "Normal/0101.jpeg": test["cache_index"].iloc[0],
        "Viral Pneumonia/0101.jpeg": test["cache_index"].iloc[1],
        "Viral Pneumonia/0101.png": test["cache_index"].iloc[2],
    }
    for name, index in chosen.items():
        (scans / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[index]).convert("RGB").save(scans / name)
    out = tmp_path / "cams"
    # when it is classified with Grad-CAM overlays
    assert main([str(scans), "--model", str(paths.models_dir), "--gradcam", str(out)]) == 0
    # then every image has its own overlay, named by its path inside the folder
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png"))
    assert written == sorted(f"{name}.gradcam.png" for name in chosen)
    assert "Grad-CAM overlays of 3 image(s)" in capsys.readouterr().out
    # and given a file and a folder from different places, names start at their shared folder
    capsys.readouterr()
    both = tmp_path / "both"
    single = scans / "Normal" / "0101.jpeg"
    assert main([str(single), str(scans / "Viral Pneumonia"), "--model",
                 str(paths.models_dir), "--gradcam", str(both)]) == 0  # fmt: skip
    written = sorted(path.relative_to(both).as_posix() for path in both.rglob("*.png"))
    assert written == sorted(f"{name}.gradcam.png" for name in chosen)


def test_a_folder_without_csv_prints_its_results_and_writes_no_file(
    project, tmp_path, monkeypatch, capsys
):
    # given a working directory such as the repository root
    paths, _, incoming = project
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    # when a folder is classified without --csv
    assert main([str(incoming), "--model", str(paths.models_dir)]) == 0
    # then the results are on stdout and nothing is left in the working directory
    assert sum("scan" in line for line in capsys.readouterr().out.splitlines()) == 5
    assert list(workdir.iterdir()) == []


def test_the_command_prints_its_answer_and_nothing_else(project):
    # given a checkout with a trained model in models/ and a new scan
    paths, test, incoming = project
    scan = Path("incoming") / "ward" / f"scan{test['cache_index'].iloc[0]}.png"
    # when `cxr-predict scan.png` runs from the checkout (the default --model models)
    lines = run_cxr_predict([str(scan)], cwd=paths.root)
    # then stdout and stderr together hold its one answer line: no library warning before it
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{scan}: ") and "[covid " in lines[0]


def test_bad_inputs_give_one_line_errors(project, tmp_path, capsys):
    paths, _, incoming = project
    assert main([str(tmp_path / "missing.png"), "--model", str(paths.models_dir)]) == 2
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    assert main([str(incoming), "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such directory or model file" in capsys.readouterr().err
    assert main([str(incoming / "ward" / "notes.txt"), "--model", str(paths.models_dir)]) == 2
    assert "no given file could be read as an image" in capsys.readouterr().err


def test_a_new_image_is_squared_the_way_the_training_images_were(project):
    # given the trained model (its record says how the build squared images) and a wide image
    paths, _, _ = project
    predictor = load_predictor(paths.models_dir)
    wide = np.tile(np.linspace(0, 255, 90, dtype=np.uint8), (30, 1))
    for mode in ("pad", "crop", "stretch"):
        record = dataclasses.replace(predictor.record, resize=mode)
        squared = dataclasses.replace(predictor, record=record).prepare([wide])
        # when it is prepared, then it took the record's mode to the cache side, then the model's
        expected = resize_batch(
            resize_square(wide, record.cache_size, mode)[np.newaxis, ..., np.newaxis],
            predictor.image_size,
        )
        np.testing.assert_array_equal(squared, expected)
    assert predictor.record.resize == "pad"


def test_files_classified_chunk_by_chunk_give_the_table_and_inputs_of_one_pass(project):
    # given the folder's files, a broken one among them
    paths, _, incoming = project
    predictor = load_predictor(paths.models_dir)
    files = sorted(path for path in (incoming / "ward").iterdir() if path.suffix != ".txt")
    # when they are classified two at a time (chunks with and without the broken file)
    chunked, chunked_images = predict_files(predictor, files, 10_000_000, chunk=2)
    whole, whole_images = predict_files(predictor, files, 10_000_000, chunk=len(files))
    # then the rows, in file order, and the model inputs are those of a single pass
    pd.testing.assert_frame_equal(chunked, whole, check_exact=False, atol=1e-6)
    assert np.array_equal(chunked_images, whole_images)
    assert (chunked["error"] != "").sum() == 1


def test_a_split_scored_chunk_by_chunk_from_the_cache_gives_the_one_pass_probabilities(project):
    # Given the trained model and its test split, held in memory and as lazy cache rows
    paths, test, _ = project
    predictor = load_predictor(str(paths.models_dir))
    held = load_split_pixels(paths.pixel_cache, test["cache_index"], predictor.image_size)
    lazy = CachedImages(paths.pixel_cache, test["cache_index"], predictor.image_size)
    # When the lazy rows are scored five images at a time
    chunked, speed = predictor.timed_predict_proba(lazy, batch_size=4, chunk=5)
    # Then the probabilities are those of one pass over the held split, and a speed is given
    np.testing.assert_allclose(chunked, predictor.predict_proba(held), atol=1e-5)
    assert chunked.shape == (len(test), len(NAMES)) and speed > 0


def _ct_dicom(side: int = 48) -> bytes:
    """A small CT slice (-1200 .. 1200 HU by its rescale) in the DICOM file format."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = uid.CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = uid.generate_uid()
    dataset.Modality, dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = "CT", side, side, 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation, dataset.RescaleIntercept, dataset.RescaleSlope = 1, -1024, 1
    ramp = np.linspace(-1200, 1200, side * side).reshape(side, side) + 1024
    dataset.PixelData = ramp.astype(np.int16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_dicom_file_is_found_by_content_and_windowed_as_the_record_says(tmp_path):
    # Given a model whose record says DICOM was shown through the lung window, and a folder
    # holding a DICOM file without an extension beside a text file
    pixels, labels = phantom_pixels(24, seed=3)
    models_dir = sklearn_models_dir(tmp_path / "models", pixels, labels)
    record = dataclasses.replace(read_run_record(models_dir), dicom_window="lung")
    write_run_record(models_dir, record)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "IM000001").write_bytes(_ct_dicom())
    (incoming / "notes").write_text("not an image")
    # When the folder is searched and its images classified
    files = image_files([incoming])
    predictor = load_predictor(models_dir)
    table, images = predict_files(predictor, list(files), 10_000_000)
    # Then the DICOM file is found and its model input is the lung window's, not another's
    assert list(files.values()) == [Path("IM000001")] and table["error"].tolist() == [""]
    lung = decode_gray(incoming / "IM000001", 10_000_000, record.cache_size, "lung")
    np.testing.assert_array_equal(images, predictor.prepare([lung]))
    full = decode_gray(incoming / "IM000001", 10_000_000, record.cache_size, "full")
    assert not np.array_equal(images, predictor.prepare([full]))
