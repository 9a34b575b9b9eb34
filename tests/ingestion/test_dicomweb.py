"""Tests for the DICOMweb source (cxr/ingestion/dicomweb.py) against a real Orthanc server.

The server is Debian's `orthanc` with its DICOMweb plugin (`apt-get install orthanc
orthanc-dicomweb`; .ci/run installs them where it can), started on 127.0.0.1 at a free port with
its own storage in a temporary folder, and stopped at the end. Without it those tests skip,
saying so; the params checks run everywhere.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxr.core.dicom import is_dicom_file
from cxr.core.errors import PipelineError
from cxr.core.params import DataParams, parse_params
from cxr.core.paths import ProjectPaths
from cxr.core.pseudonyms import Pseudonyms
from cxr.ingestion import dicomweb
from cxr.ingestion.dicomweb import TOKEN_VARIABLE, Instance, download_folder_name
from cxr.ingestion.ingest import ingest

# Where Debian puts the server (in /usr/sbin, off a normal user's PATH) and its plugin.
ORTHANC_PATH = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"
PLUGIN_PLACES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
STARTUP_S = 30
SIDE = 32
INSTANCES_PER_STUDY = 3
# Two studies per class; each holds one DX series (fetched) and one secondary capture series
# (left out by series_query); one CT study is left out by the study query.
CLASSES = ("covid", "covid", "normal", "normal")


def _orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or shutil.which("Orthanc", path=ORTHANC_PATH)


def _plugin() -> str | None:
    return next((place for place in PLUGIN_PLACES if Path(place).is_file()), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running Orthanc: its DICOMweb root and REST root."""

    rest: str
    process: subprocess.Popen[bytes]

    @property
    def dicomweb(self) -> str:
        """data.source for it."""
        return f"dicomweb+{self.rest}/dicom-web"


@contextlib.contextmanager
def _orthanc(folder: Path, authenticated: bool = False) -> Iterator[Server]:
    """Start Orthanc on a free port with storage in `folder`; stop it when the caller is done."""
    binary, plugin = _orthanc_binary(), _plugin()
    if binary is None or plugin is None:
        pytest.skip(
            "Orthanc with its DICOMweb plugin is not installed (Debian/Ubuntu: apt-get install "
            "orthanc orthanc-dicomweb; .ci/run installs them where it can)"
        )
    port = _free_port()
    config = {
        "Name": "cxr-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        # No DICOM (4242) listener: only the HTTP port, which is free, so a system Orthanc
        # started by the package on 8042 / 4242 is no obstacle.
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": authenticated,
        "RegisteredUsers": {"radiologist": "secret"} if authenticated else {},
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    rest = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc stopped at start-up: {_tail(folder / 'orthanc.log')}")
            try:
                with urllib.request.urlopen(f"{rest}/system", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (401 when authentication is on): it runs
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not answer in {STARTUP_S} s: {_tail(folder)}")
                time.sleep(0.1)
        yield Server(rest, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _tail(log: Path) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    return " | ".join(text.strip().splitlines()[-3:])


def _instance(study: str, series: str, patient: str, modality: str, number: int) -> bytes:
    """A 32x32 8-bit DICOM image of one study and series, as a PS3.10 file's bytes."""
    dataset = Dataset()
    sop_class = (
        DigitalXRayImageStorageForPresentation if modality == "DX" else SecondaryCaptureImageStorage
    )
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientID = patient
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = series
    dataset.Modality = modality
    dataset.StudyDescription = "CHEST" if modality != "CT" else "HEAD"
    dataset.InstanceNumber = number
    dataset.Rows = dataset.Columns = SIDE
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    pixels = np.random.default_rng(number).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    dataset.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Archive:
    """The server and what was stored on it."""

    server: Server
    labels: dict[str, str]  # StudyInstanceUID -> class of each DX study
    fetched: dict[str, Instance]  # SOPInstanceUID -> UIDs of each instance a query wants
    uids: frozenset[str]  # every UID and patient id stored, none of which may be printed


def _upload(server: Server) -> Archive:
    """Store four labelled DX studies (plus series and a study the queries leave out)."""
    labels: dict[str, str] = {}
    fetched: dict[str, Instance] = {}
    uids: set[str] = set()

    def post(payload: bytes) -> None:
        request = urllib.request.Request(f"{server.rest}/instances", data=payload, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    for index, label in enumerate([*CLASSES, "ct"]):
        study, patient = str(generate_uid()), f"PATIENT-{index}"
        uids |= {study, patient}
        series = {"CT": generate_uid()} if label == "ct" else {"DX": generate_uid()}
        if label != "ct":
            labels[study] = label
            series["OT"] = generate_uid()  # a screenshot series in the study: not wanted
        for modality, series_uid in series.items():
            uids.add(series_uid)
            for number in range(INSTANCES_PER_STUDY):
                payload = _instance(study, series_uid, patient, modality, 10 * index + number)
                sop = str(pydicom.dcmread(io.BytesIO(payload)).SOPInstanceUID)
                uids.add(sop)
                if modality == "DX":
                    fetched[sop] = Instance(study, series_uid, sop)
                post(payload)
    return Archive(server, labels, fetched, frozenset(uids))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """A running Orthanc holding the test studies, for the whole module."""
    with _orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield _upload(server)


def _labels_table(root: Path, archive: Archive) -> None:
    """labels.csv in the checkout: one row per study, as labels mined from reports would be."""
    rows = pd.DataFrame(
        {"StudyInstanceUID": list(archive.labels), "label": list(archive.labels.values())}
    )
    rows.to_csv(root / "labels.csv", index=False)


def _data(params: dict[str, Any], source: str, **dicomweb: Any) -> DataParams:
    """The data section for a DICOMweb source, labelled by labels.csv through the study UID."""
    params["data"]["source"] = source
    params["data"]["dicomweb"] = {
        "query": {"ModalitiesInStudy": "DX"},
        "series_query": {"Modality": "DX"},
        "max_studies": 100,
        **dicomweb,
    }
    params["data"]["csv"].update(
        file="labels.csv",
        file_column="StudyInstanceUID",
        dicom_key="StudyInstanceUID",
        label_column="label",
    )
    return parse_params(params).data


def _downloaded(paths: ProjectPaths) -> dict[str, Path]:
    """SOPInstanceUID (the file name) -> file of every instance in data/downloads."""
    return {path.stem: path for path in paths.downloads_dir.glob("dicomweb-*/*/*/*.dcm")}


def test_ingest_fetches_the_matching_instances_once_and_labels_them_by_study(
    tmp_path: Path,
    archive: Archive,
    small_params_dict: dict[str, Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Given a DICOMweb source, a query for the DX studies and series, and labels per study
    _labels_table(tmp_path, archive)
    paths = ProjectPaths(tmp_path)
    data = _data(small_params_dict, archive.server.dicomweb)

    # When ingest runs
    ingested = ingest(data, paths)

    # Then each wanted instance is in data/downloads, as <study>/<series>/<sop>.dcm, once
    downloaded = _downloaded(paths)
    assert set(downloaded) == set(archive.fetched)
    url = archive.server.dicomweb.removeprefix("dicomweb+")
    folder = paths.downloads_dir / download_folder_name(url, data.dicomweb)
    for sop, path in downloaded.items():
        assert path.relative_to(folder).as_posix() == archive.fetched[sop].relative
        assert is_dicom_file(path) and str(pydicom.dcmread(path).SOPInstanceUID) == sop
    assert not list(folder.rglob(".staging*"))  # no temporaries left

    # And data/raw holds them under their UIDs' pseudonyms, and the table
    pseudonyms = Pseudonyms(tmp_path)
    raw_names = {
        instance.pseudonymous(pseudonyms): instance for instance in archive.fetched.values()
    }
    raw_files = {
        path.relative_to(paths.raw_dir).as_posix()
        for path in paths.raw_dir.rglob("*")
        if path.is_file()
    }
    assert raw_files == {*raw_names, "labels.csv"}

    # And the manifest labels each by its study's row: two studies of three films per class
    manifest = ingested.manifest
    assert ingested.layout == "csv"
    assert ingested.counts == {"covid": 6, "normal": 6}
    assert sorted(manifest["path"]) == sorted(raw_names)
    for path, label in zip(manifest["path"], manifest["label"], strict=True):
        assert label == archive.labels[raw_names[path].study]

    # And no identifier was printed or written to the manifest, only counts
    printed = capfd.readouterr()
    assert "12 instance(s) in 4 study(ies) match; 0 already in" in printed.out
    shown = printed.out + printed.err + manifest.to_csv()
    assert not [uid for uid in archive.uids if uid in shown]


def test_a_rerun_fetches_only_what_is_missing(
    tmp_path: Path,
    archive: Archive,
    small_params_dict: dict[str, Any],
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Given a first run limited to two studies
    _labels_table(tmp_path, archive)
    paths = ProjectPaths(tmp_path)
    ingest(_data(small_params_dict, archive.server.dicomweb, max_studies=2), paths)
    first = {sop: path.stat().st_mtime_ns for sop, path in _downloaded(paths).items()}
    assert len(first) == 2 * INSTANCES_PER_STUDY
    capfd.readouterr()

    # When max_studies is raised: the same folder, and only the new studies' instances fetched
    ingest(_data(small_params_dict, archive.server.dicomweb), paths)
    assert "fetching 6" in capfd.readouterr().out
    second = _downloaded(paths)
    assert set(second) == set(archive.fetched)
    assert all(second[sop].stat().st_mtime_ns == mtime for sop, mtime in first.items())

    # When a download was cut short (one instance never written) and ingest runs again
    lost = sorted(second)[0]
    second[lost].unlink()
    kept = {sop: path.stat().st_mtime_ns for sop, path in second.items() if sop != lost}
    ingested = ingest(_data(small_params_dict, archive.server.dicomweb), paths)

    # Then exactly that instance is fetched again, and the dataset is whole
    assert "11 already in" in capfd.readouterr().out
    third = _downloaded(paths)
    assert set(third) == set(archive.fetched)
    assert all(third[sop].stat().st_mtime_ns == mtime for sop, mtime in kept.items())
    assert ingested.counts == {"covid": 6, "normal": 6}


def test_a_download_cut_off_midway_leaves_whole_files_and_resumes(
    tmp_path: Path,
    archive: Archive,
    small_params_dict: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Given a connection that drops after five instances were fetched (over several threads,
    # so those written are the ones before the first failed fetch in the server's order)
    _labels_table(tmp_path, archive)
    paths = ProjectPaths(tmp_path)
    data = _data(small_params_dict, archive.server.dicomweb)
    fetch_one, fetched = dicomweb._retrieve, itertools.count()

    def dropping(client: Any, instance: Instance) -> Any:
        if next(fetched) >= 5:
            raise requests.ConnectionError("connection reset by the network")
        return fetch_one(client, instance)

    monkeypatch.setattr(dicomweb, "_retrieve", dropping)

    # When ingest runs, then one line says the retrieval failed, and data/raw is not written
    with pytest.raises(PipelineError, match=r"retrieving instances \(WADO-RS\) failed"):
        ingest(data, paths)
    assert not paths.raw_dir.exists()
    # And each instance on disk is whole: complete DICOM files, no temporaries
    partial = _downloaded(paths)
    assert 1 <= len(partial) <= 5
    assert all(str(pydicom.dcmread(path).SOPInstanceUID) == sop for sop, path in partial.items())
    assert not list(paths.downloads_dir.rglob(".staging*"))
    capfd.readouterr()

    # When the connection is back and ingest runs again, then only the others are fetched
    monkeypatch.setattr(dicomweb, "_retrieve", fetch_one)
    ingested = ingest(data, paths)
    printed = capfd.readouterr().out
    assert f"{len(partial)} already in" in printed
    assert f"fetching {len(archive.fetched) - len(partial)}\n" in printed
    assert set(_downloaded(paths)) == set(archive.fetched)
    assert ingested.counts == {"covid": 6, "normal": 6}


def test_the_fetched_instances_build_into_the_pixel_cache(
    tmp_path: Path, archive: Archive, small_params_dict: dict[str, Any]
) -> None:
    # Given a DICOMweb source ingested
    from stages.build import build

    _labels_table(tmp_path, archive)
    paths = ProjectPaths(tmp_path)
    ingest(_data(small_params_dict, archive.server.dicomweb), paths)
    small_params_dict["build"].update(cache_size=SIDE, histogram_images_per_class=2)
    small_params_dict["train"]["image_size"] = SIDE
    build_params = parse_params(small_params_dict).build

    # When build decodes it
    images = build(build_params, seed=0, workers=1, paths=paths)

    # Then every fetched instance is an image of the cache, with its label
    assert len(images) == len(archive.fetched)
    assert images["label"].value_counts().to_dict() == {"covid": 6, "normal": 6}


@pytest.mark.parametrize(
    ("dicomweb", "expected"),
    [
        ({"query": {"PatientID": "NOBODY"}}, "data.dicomweb.query = {'PatientID': 'NOBODY'}: no "),
        ({"series_query": {"Modality": "MR"}}, "none of the 4 matching studies"),
    ],
)
def test_a_query_that_matches_nothing_is_one_line(
    tmp_path: Path,
    archive: Archive,
    small_params_dict: dict[str, Any],
    dicomweb: dict[str, Any],
    expected: str,
) -> None:
    # Given a query no study (or no series) on the server matches
    _labels_table(tmp_path, archive)
    data = _data(small_params_dict, archive.server.dicomweb, **dicomweb)

    # When ingest runs, then one line says so, naming the server
    with pytest.raises(PipelineError, match=expected) as raised:
        ingest(data, ProjectPaths(tmp_path))
    assert "\n" not in str(raised.value) and archive.server.dicomweb in str(raised.value)
    assert not (tmp_path / "data" / "raw").exists()


def test_an_unreachable_server_or_a_wrong_root_is_one_line(
    tmp_path: Path, archive: Archive, small_params_dict: dict[str, Any]
) -> None:
    # Given a port nothing listens on, and the real server under a wrong DICOMweb root
    _labels_table(tmp_path, archive)
    closed = f"dicomweb+http://127.0.0.1:{_free_port()}/dicom-web"
    wrong_root = f"dicomweb+{archive.server.rest}/no-dicom-web-here"

    # When ingest runs, then one line names the URL and the cause, within seconds
    started = time.monotonic()
    with pytest.raises(PipelineError) as refused:
        ingest(_data(small_params_dict, closed), ProjectPaths(tmp_path))
    assert time.monotonic() - started < 15
    assert str(refused.value) == (
        f"data.source = {closed!r}: searching studies (QIDO-RS) failed (Connection refused); "
        "check the URL, the network and that the server is running"
    )
    with pytest.raises(PipelineError, match=r"failed \(HTTP 404 Not Found\); check the DICOMweb"):
        ingest(_data(small_params_dict, wrong_root), ProjectPaths(tmp_path))


def test_a_server_that_wants_credentials_says_how_to_give_a_token(
    tmp_path: Path,
    archive: Archive,
    small_params_dict: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an Orthanc that requires a login, and a token it does not accept
    monkeypatch.setenv(TOKEN_VARIABLE, "not-a-valid-token")
    _labels_table(tmp_path, archive)
    with _orthanc(tmp_path / "locked", authenticated=True) as server:
        data = _data(small_params_dict, server.dicomweb)

        # When ingest runs, then one line says the server refused and how to pass a token
        with pytest.raises(PipelineError, match=r"\(HTTP 401 Unauthorized\); set CXR_DICOMWEB"):
            ingest(data, ProjectPaths(tmp_path))


def test_a_missing_label_table_stops_before_anything_is_fetched(
    tmp_path: Path, archive: Archive, small_params_dict: dict[str, Any]
) -> None:
    # Given no labels.csv in the checkout
    data = _data(small_params_dict, archive.server.dicomweb)

    # When ingest runs, then one line names the table, and nothing was downloaded
    with pytest.raises(PipelineError, match=r"data.csv.file = 'labels.csv': no readable table"):
        ingest(data, ProjectPaths(tmp_path))
    assert not list((tmp_path / "data" / "downloads").glob("dicomweb-*"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"source": "dicomweb+ftp://pacs/dicom-web"}, "write dicomweb+https://<host>"),
        ({"source": "dicomweb+https://user:pw@pacs/dicomweb"}, "CXR_DICOMWEB_TOKEN"),
        ({"source": "dicomweb+https://pacs/dicomweb?Modality=DX"}, "go in data.dicomweb.query"),
        ({"csv": {"file": ""}}, "data.csv.file = '': data.source = 'dicomweb+"),
        ({"dicomweb": {"query": {"Modalty": "DX"}}}, "did you mean Modality?"),
        ({"dicomweb": {"query": {"Modality": "DX"}}}, "put it in data.dicomweb.series_query"),
        ({"dicomweb": {"query": {"limit": 5}}}, "data.dicomweb.max_studies"),
        ({"dicomweb": {"series_query": {"Modality": ""}}}, "leave the key out"),
        ({"dicomweb": {"max_studies": 0}}, "data.dicomweb.max_studies = 0"),
    ],
)
def test_bad_dicomweb_params_are_one_line_errors(
    valid_params_dict: dict[str, Any], change: dict[str, Any], expected: str
) -> None:
    # Given a DICOMweb source with one bad value
    data = valid_params_dict["data"]
    data["source"] = "dicomweb+https://pacs.example.org/dicom-web"
    data["csv"]["file"] = "labels.csv"
    for key, value in change.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value

    # When params are parsed, then one line names the key and what would be right
    with pytest.raises(PipelineError, match=re.escape(expected)) as raised:
        parse_params(valid_params_dict)
    assert "\n" not in str(raised.value)


def test_query_values_are_text_and_tags_are_accepted(valid_params_dict: dict[str, Any]) -> None:
    # Given a date YAML reads as a number and a filter by tag
    data = valid_params_dict["data"]
    data["source"] = "dicomweb+http://localhost:8042/dicom-web"
    data["csv"]["file"] = "labels.csv"
    data["dicomweb"]["query"] = {"StudyDate": 20200101, "00080061": "DX"}

    # When params are parsed, then the values are the text QIDO-RS sends
    assert parse_params(valid_params_dict).data.dicomweb.query == {
        "StudyDate": "20200101",
        "00080061": "DX",
    }
