"""A DICOMweb source: studies found with QIDO-RS, each of their instances fetched once by WADO-RS.

data.source dicomweb+http(s)://<host>/<DICOMweb root> reads a hospital archive (Orthanc, dcm4chee)
or a cloud store (Google Cloud Healthcare, AWS HealthImaging, the NCI Imaging Data Commons) over
DICOMweb. The search walks down the hierarchy every server answers (AWS HealthImaging answers no
other): the studies matching data.dicomweb.query, each study's series matching series_query,
each series' instances. Every instance is written, atomically, to
data/downloads/dicomweb-<hash>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm, the
hash naming the server and the queries, so a re-run (after an interruption, or with a larger
max_studies) fetches only the instances not there yet.

UIDs are identifiers: they name the downloaded files (data/downloads is a DVC output, never
in git) but are never printed, and the copies in data/raw are named by their pseudonyms
(cxr.core.pseudonyms), so the manifest, splits and MLflow never show them. A server that needs
a token gets CXR_DICOMWEB_TOKEN from the environment as `Authorization: Bearer <token>`; it is
never a param, which would land in git and MLflow.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_file
from cxr.core.params import DICOMWEB_PREFIX, DicomwebParams
from cxr.core.progress import Progress, track
from cxr.core.pseudonyms import Pseudonyms

TOKEN_VARIABLE = "CXR_DICOMWEB_TOKEN"
# Seconds to wait for a server's answer; a large instance over a slow link takes a while.
TIMEOUT_S = 60
# A refused connection or an answer of 408, 429, 503 or 504 is tried again after 1 s, then 2 s:
# a busy server gets its breath, and an unreachable one is reported in seconds, not minutes.
ATTEMPTS = 3
RETRY_WAIT_MS = 500
# Instances fetched at once: a request waits on the network far longer than on this machine.
CONNECTIONS = 4
# Tags of the UIDs in QIDO-RS answers (DICOM JSON is keyed by tag).
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
# A DICOM UID: digits separated by dots, at most 64 characters (PS3.5 9.1); checked before one
# becomes a file name, so no answer can name a path outside the downloads folder.
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX_LENGTH = 64
UID_IN_TEXT = re.compile(r"\d+(\.\d+){2,}")
WHAT_UIDS = {
    STUDY_UID: "StudyInstanceUID",
    SERIES_UID: "SeriesInstanceUID",
    SOP_UID: "SOPInstanceUID",
}
# What a failed request raises: requests' errors (HTTP status, connection, timeout), and
# dicomweb-client's ValueError or pydicom's InvalidDicomError for an answer that is not DICOM.
REQUEST_ERRORS = (requests.RequestException, ValueError, InvalidDicomError)


@dataclass(frozen=True)
class Instance:
    """One instance a query found, by its UIDs."""

    study: str
    series: str
    sop: str

    @property
    def relative(self) -> str:
        """Its file in the download folder: <study>/<series>/<sop>.dcm."""
        return f"{self.study}/{self.series}/{self.sop}.dcm"

    def pseudonymous(self, pseudonyms: Pseudonyms) -> str:
        """Its file in data/raw: the same path of the UIDs' pseudonyms (the manifest's study)."""
        study = pseudonyms("StudyInstanceUID", self.study)
        series = pseudonyms("SeriesInstanceUID", self.series)
        return f"{study}/{series}/{pseudonyms('SOPInstanceUID', self.sop)}.dcm"


@dataclass(frozen=True)
class Fetched:
    """A DICOMweb query's instances on disk: the download folder and their paths in it."""

    folder: Path
    instances: list[Instance]  # each in folder at instance.relative, in the server's order


def download_folder_name(url: str, dicomweb: DicomwebParams) -> str:
    """dicomweb-<12 hex digits> of the server and queries (not max_studies: raising it reuses)."""
    key = json.dumps(
        {"url": url, "query": dicomweb.query, "series_query": dicomweb.series_query},
        sort_keys=True,
    )
    return f"dicomweb-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _reason(error: BaseException) -> str:
    """What went wrong in a few words: the innermost cause (refused, unknown host, timed out)."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if not isinstance(error, requests.RequestException):  # an answer that is not what it should be
        # Any UID the message quotes is left out: UIDs are identifiers, never shown.
        message = UID_IN_TEXT.sub("<UID>", " ".join(str(error).split()))
        return f"{type(error).__name__}: {message[:200]}"
    innermost: BaseException = error
    seen = {id(error)}
    while True:
        following = getattr(innermost, "reason", None)
        if not isinstance(following, BaseException):
            following = innermost.__cause__ or innermost.__context__
        if following is None or id(following) in seen:
            break
        seen.add(id(following))
        innermost = following
    if isinstance(innermost, OSError) and innermost.strerror:
        return innermost.strerror
    if isinstance(innermost, requests.Timeout) or "timed out" in str(innermost).lower():
        return f"no answer within {TIMEOUT_S} s"
    return type(innermost).__name__


def _failure(source: str, error: BaseException, doing: str) -> PipelineError:
    """One line naming the server, what ingest was doing, the cause and what to check."""
    reason = _reason(error)
    response = error.response if isinstance(error, requests.HTTPError) else None
    status = response.status_code if response is not None else None
    if status in (401, 403):
        hint = (
            f"set {TOKEN_VARIABLE} to a valid access token (Google Cloud and IDC: `export "
            f"{TOKEN_VARIABLE}=$(gcloud auth print-access-token)`)"
        )
    elif status == 404:
        hint = "check the DICOMweb root in the URL (e.g. /dicom-web for Orthanc)"
    elif status == 400:
        hint = "check data.dicomweb.query and series_query: the server refused a filter"
    elif status is not None:
        hint = "the server failed; try again later"
    else:
        hint = "check the URL, the network and that the server is running"
    return PipelineError(f"data.source = {source!r}: {doing} failed ({reason}); {hint}")


def _client(url: str, token: str) -> DICOMwebClient:
    """A DICOMweb client of the server, with the bearer token when there is one."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = DICOMwebClient(url, headers=headers, timeout=TIMEOUT_S)
    client.set_http_retry_params(
        retry=True, max_attempts=ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS
    )
    return client


def _uid(result: Mapping[str, Any], tag: str) -> str:
    """A UID of a QIDO-RS answer, checked to be a DICOM UID (it becomes a file name)."""
    values = result.get(tag, {}).get("Value") or [""]
    uid = str(values[0])
    if not UID_PATTERN.fullmatch(uid) or len(uid) > UID_MAX_LENGTH:
        raise PipelineError(
            f"the DICOMweb server answered with a {WHAT_UIDS[tag]} that is not a DICOM UID "
            "(digits and dots, at most 64); its instances cannot be named, fix them on the server"
        )
    return uid


def _studies(client: DICOMwebClient, query: dict[str, str], max_studies: int) -> list[str]:
    """The first max_studies matching studies' UIDs, page by page (servers cap an answer)."""
    found: dict[str, None] = {}
    while len(found) < max_studies:
        page = client.search_for_studies(
            search_filters=dict(query), limit=max_studies - len(found), offset=len(found)
        )
        before = len(found)
        found.update(dict.fromkeys(_uid(study, STUDY_UID) for study in page))
        if len(found) == before:  # an empty page, or a server that ignores offset
            break
    return list(found)[:max_studies]


def _instances(client: DICOMwebClient, study: str, series_query: dict[str, str]) -> list[Instance]:
    """The instances of a study's series that match series_query."""
    instances = []
    for series_result in client.search_for_series(
        study, search_filters=dict(series_query), get_remaining=True
    ):
        series = _uid(series_result, SERIES_UID)
        for result in client.search_for_instances(study, series, get_remaining=True):
            instances.append(Instance(study, series, _uid(result, SOP_UID)))
    return instances


def find_instances(client: DICOMwebClient, source: str, dicomweb: DicomwebParams) -> list[Instance]:
    """Every instance of the matching series of the first max_studies matching studies."""
    try:
        studies = _studies(client, dicomweb.query, dicomweb.max_studies)
    except REQUEST_ERRORS as error:
        raise _failure(source, error, "searching studies (QIDO-RS)") from None
    if not studies:
        raise PipelineError(
            f"data.dicomweb.query = {dicomweb.query}: no study on {source} matches; a study "
            "search matches study and patient attributes (e.g. ModalitiesInStudy, "
            "StudyDescription, StudyDate, PatientID); wildcards are * and ?"
        )
    instances: list[Instance] = []
    try:
        for study in track(studies, "searching", "studies"):
            instances.extend(_instances(client, study, dicomweb.series_query))
    except REQUEST_ERRORS as error:
        raise _failure(source, error, "searching series and instances (QIDO-RS)") from None
    if not instances:
        raise PipelineError(
            f"data.dicomweb.series_query = {dicomweb.series_query}: none of the {len(studies)} "
            f"matching studies on {source} has a matching series with instances"
        )
    # One file per instance, even if a server lists one twice.
    return list({instance.sop: instance for instance in instances}.values())


def _retrieve(client: DICOMwebClient, instance: Instance) -> Dataset:
    """Fetch one instance as stored (any transfer syntax: pixels are never re-encoded)."""
    return client.retrieve_instance(instance.study, instance.series, instance.sop)


def _write(dataset: Dataset, target: Path) -> None:
    """Write a fetched instance as a DICOM file, whole or not at all."""
    # An interrupted run leaves no half file, so the next one fetches exactly the missing
    # instances. The file format (preamble, DICM, file meta) is enforced, so the file is
    # recognised as DICOM by its content.
    try:
        with staged_file(target) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
    except OSError as error:
        # Named by the download folder: the file's own name is a UID, never shown.
        raise PipelineError(
            f"{target.parents[2]}: cannot write a fetched instance ({error.strerror or error}); "
            "check the free disk space"
        ) from None


def _fetch_in_order(
    fetch: Callable[[Instance], Dataset],
    instances: Sequence[Instance],
    write: Callable[[Instance, Dataset], None],
) -> None:
    """Fetch over CONNECTIONS threads, write in this thread in order; an error stops both.

    At most 2 x CONNECTIONS fetched instances wait in memory; the writes stay in one thread
    (the staging folder is shared), and they stop at the first failed fetch.
    """
    remaining = iter(instances)
    with ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="dicomweb") as pool:
        waiting = collections.deque(
            (instance, pool.submit(fetch, instance))
            for instance in itertools.islice(remaining, 2 * CONNECTIONS)
        )
        try:
            while waiting:
                instance, future = waiting.popleft()
                dataset = future.result()
                following = next(remaining, None)
                if following is not None:
                    waiting.append((following, pool.submit(fetch, following)))
                write(instance, dataset)
        finally:
            for _instance, future in waiting:
                future.cancel()


def fetch_dicomweb(
    source: str, dicomweb: DicomwebParams, downloads_dir: Path, token: str
) -> Fetched:
    """Search the server for the instances data.dicomweb selects; fetch those not yet on disk."""
    url = source.removeprefix(DICOMWEB_PREFIX)
    client = _client(url, token)
    instances = find_instances(client, source, dicomweb)
    folder = downloads_dir / download_folder_name(url, dicomweb)
    missing = [instance for instance in instances if not (folder / instance.relative).is_file()]
    studies = len({instance.study for instance in instances})
    print(
        f"ingest: {source}: {len(instances)} instance(s) in {studies} study(ies) match; "
        f"{len(instances) - len(missing)} already in {folder}, fetching {len(missing)}"
    )
    # One client per thread: a requests session is not meant to be shared between threads.
    local = threading.local()

    def fetch(instance: Instance) -> Dataset:
        if not hasattr(local, "client"):
            local.client = _client(url, token)
        return _retrieve(local.client, instance)

    if missing:
        try:
            # Shown whatever the count: its time depends on the network.
            with Progress("retrieving", "instances", len(missing), min_total=0) as progress:

                def write(instance: Instance, dataset: Dataset) -> None:
                    _write(dataset, folder / instance.relative)
                    progress.update()

                _fetch_in_order(fetch, missing, write)
        except REQUEST_ERRORS as error:
            raise _failure(source, error, "retrieving instances (WADO-RS)") from None
    return Fetched(folder, instances)
