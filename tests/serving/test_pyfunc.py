import base64
import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from evaluation_fixtures import NAMES, run_cxr_predict, write_project
from mlflow.pyfunc.scoring_server import invocations
from mlflow.tracking import MlflowClient
from PIL import Image

from cxr.models.loading import load_models_dir, load_predictor
from cxr.models.run_record import read_run_record
from cxr.serving.predict import main as predict_main
from cxr.serving.pyfunc import log_classifier


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny CNN logged as the pyfunc classifier of a real run and registered as champion."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(uri)
        paths = write_project(root, epochs=8)
        pixels = np.load(paths.pixel_cache)
        local = load_models_dir(paths.models_dir)
        with mlflow.start_run() as run:
            record = read_run_record(paths.models_dir)
            model_uri = log_classifier(paths.models_dir, record, pixels[0], max_pixels=10**7)
        version = mlflow.register_model(model_uri, "cxr-serving")
        MlflowClient().set_registered_model_alias("cxr-serving", "champion", version.version)
        yield paths, run.info.run_id, model_uri, local


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def test_pyfunc_takes_raw_png_and_jpeg_bytes_or_paths(logged, tmp_path):
    paths, run_id, model_uri, local = logged
    model = mlflow.pyfunc.load_model(model_uri)
    # signature, class names and preprocessing travel with the model
    assert [spec.name for spec in model.metadata.signature.inputs] == ["image", "path"]
    outputs = [spec.name for spec in model.metadata.signature.outputs]
    assert outputs == ["class", "confidence", "p_covid", "p_normal", "error"]
    assert model.metadata.metadata["class_names"] == NAMES
    assert "resize_square" in model.metadata.metadata["preprocessing"]
    # raw file bytes (PNG and JPEG) give the local model's probabilities on the cached pixels
    pixels = np.load(paths.pixel_cache)
    result = model.predict(
        pd.DataFrame({"image": [encoded(pixels[0], "PNG"), encoded(pixels[1], "PNG"), b"junk"]})
    )
    assert result["error"].iloc[2].startswith("not_an_image")
    assert result["class"].iloc[2] is None and result["p_covid"].iloc[2] is None
    expected = local.predict_proba(local.prepare([pixels[0], pixels[1]]))
    scores = result[["p_covid", "p_normal"]].to_numpy(float)[:2]
    assert np.allclose(scores, expected, atol=1e-5)
    assert list(result["class"][:2]) == [NAMES[i] for i in expected.argmax(axis=1)]
    jpeg = tmp_path / "scan.jpg"
    jpeg.write_bytes(encoded(pixels[2], "JPEG"))
    by_path = model.predict(pd.DataFrame({"path": [str(jpeg)]}))
    assert by_path["error"].iloc[0] == "" and by_path["class"].iloc[0] in NAMES


def test_predictors_and_predict_cli_load_runs_and_the_registry_champion(logged, capsys):
    paths, run_id, _, local = logged
    pixels = np.load(paths.pixel_cache)
    images = local.prepare([pixels[0], pixels[5]])
    for uri in (f"runs:/{run_id}", "models:/cxr-serving@champion"):
        predictor = load_predictor(uri)
        assert predictor.class_names == tuple(NAMES) and predictor.kind == "keras"
        assert np.allclose(predictor.predict_proba(images), local.predict_proba(images), atol=1e-5)
    file = sorted(paths.raw_dir.rglob("*.png"))[0]
    assert predict_main([str(file), "--model", "models:/cxr-serving@champion"]) == 0
    assert f"{file}: " in capsys.readouterr().out
    assert predict_main([str(file), "--model", "models:/cxr-serving@nobody"]) == 2
    assert "cannot load this MLflow model" in capsys.readouterr().err
    # and the command, loading the logged classifier, prints its answer and nothing else
    champion = [str(file), "--model", "models:/cxr-serving@champion"]
    store = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    lines = run_cxr_predict(champion, paths.root, store)
    assert len(lines) == 1 and lines[0].startswith(f"{file}: "), lines


def strict_json(text: str):
    """Parse JSON as a strict parser would: NaN and Infinity are not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


def test_the_served_model_answers_null_and_the_reason_for_a_row_that_is_not_an_image(logged):
    paths, _, model_uri, _ = logged
    model = mlflow.pyfunc.load_model(model_uri)
    pixels = np.load(paths.pixel_cache)
    # given a JSON request as `mlflow models serve` takes it: one PNG, then a text file's bytes
    rows = [encoded(pixels[0], "PNG"), b"patient notes, not an image"]
    body = json.dumps(
        {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(row).decode()] for row in rows],
            }
        }
    )
    # when the scoring server's /invocations handler answers it
    answer = invocations(body, "application/json", model, model.metadata.get_input_schema())
    # then the answer is strict JSON: the image gets a class, the text row nulls and its reason
    assert answer.status == 200
    image, text = strict_json(answer.response)["predictions"]
    assert image["class"] in NAMES and image["error"] == ""
    assert abs(image["p_covid"] + image["p_normal"] - 1) < 1e-4
    assert text["error"].startswith("not_an_image")
    assert [text[key] for key in ("class", "confidence", "p_covid", "p_normal")] == [None] * 4


def test_the_served_model_decodes_dicom_through_the_window_train_recorded():
    # Given a classifier whose record says DICOM was shown through [40, 400], and a DICOM slice
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    from cxr.images.decoding import decode_bytes
    from cxr.models.run_record import RunRecord
    from cxr.serving.pyfunc import ImageClassifier

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = uid.CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = uid.generate_uid()
    dataset.Modality, dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = "CT", 40, 40, 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation, dataset.RescaleIntercept, dataset.RescaleSlope = 1, -1024, 1
    dataset.WindowCenter, dataset.WindowWidth = -600, 1500
    ramp = np.linspace(-1000, 1000, 40 * 40).reshape(40, 40) + 1024
    dataset.PixelData = ramp.astype(np.int16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    record = RunRecord(
        "r", "0", tuple(NAMES), "pixel_logreg", "sklearn", 16, 32, "pad", "", (40.0, 400.0)
    )
    classifier = ImageClassifier(record, 10_000_000)
    # When a row's bytes are decoded, then the recorded window is used, not the file's own
    decoded = classifier.decode_row(buffer.getvalue(), None)
    windowed = decode_bytes(buffer.getvalue(), 10_000_000, 32, (40.0, 400.0)).pixels
    np.testing.assert_array_equal(decoded, windowed)
    assert not np.array_equal(decoded, decode_bytes(buffer.getvalue(), 10_000_000, 32).pixels)
