"""Tests for data.source resolution: archives, safe extraction, pinned URLs, Kaggle."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import random
import stat
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cxr.core.errors import ParamsError, PipelineError
from cxr.core.params import parse_params
from cxr.core.paths import ProjectPaths
from cxr.ingestion.ingest import Ingested, ingest
from cxr.ingestion.sources import extract_archive

# The files of a small two-class dataset inside a wrapper folder, as archives usually have.
DATASET = {
    "Covid19-dataset/train/Covid/01 a%.png": b"covid-1",
    "Covid19-dataset/train/Normal/ü.jpeg": b"normal-1",
    "Covid19-dataset/test/Covid/02.png": b"covid-2",
    "Covid19-dataset/test/Normal/03.jpeg": b"normal-2",
}


# Limits far above the small test archives, for the tests that are not about limits.
LIMITS = {"max_bytes": 10**9, "max_files": 10_000}


def _write_zip(path: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    return path


def _write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as bundle:  # type: ignore[call-overload]
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            bundle.addfile(info, io.BytesIO(content))
    return path


def _ingest(tmp_path: Path, params: dict[str, Any], source: str, **data: Any) -> Ingested:
    params["data"]["source"] = source
    params["data"].update(data)
    return ingest(parse_params(params).data, ProjectPaths(tmp_path / "repo"))


def _expected_rows() -> set[tuple[str, str, str]]:
    return {
        ("Covid19-dataset/train/Covid/01 a%.png", "covid", "train"),
        ("Covid19-dataset/train/Normal/ü.jpeg", "normal", "train"),
        ("Covid19-dataset/test/Covid/02.png", "covid", "test"),
        ("Covid19-dataset/test/Normal/03.jpeg", "normal", "test"),
    }


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("data.zip", _write_zip),
        ("data.tar", _write_tar),
        ("data.tar.gz", functools.partial(_write_tar, mode="w:gz")),
        ("data.tgz", functools.partial(_write_tar, mode="w:gz")),
    ],
)
def test_archive_source_is_extracted_into_raw(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    name: str,
    writer: Callable[[Path, dict[str, bytes]], Path],
) -> None:
    # Given the dataset packed as an archive, and its bytes
    archive = writer(tmp_path / name, DATASET)
    before = archive.read_bytes()

    # When it is ingested
    ingested = _ingest(tmp_path, small_params_dict, str(archive))

    # Then data/raw holds the extracted files byte for byte, the manifest labels them
    raw_dir = ProjectPaths(tmp_path / "repo").raw_dir
    assert {
        path.relative_to(raw_dir).as_posix(): path.read_bytes()
        for path in raw_dir.rglob("*")
        if path.is_file()
    } == DATASET
    assert ingested.layout == "split_folders"
    rows = ingested.manifest[["path", "label", "given_split"]].itertuples(index=False)
    assert {tuple(row) for row in rows} == _expected_rows()
    # and the archive itself was not changed
    assert archive.read_bytes() == before


def _tar_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_tar_member("/tmp/evil.png", tarfile.REGTYPE), "has an absolute path"),
        (_tar_member("data/../../evil.png", tarfile.REGTYPE), "has a '..' component"),
        (_tar_member("data/link.png", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
        (_tar_member("data/hard.png", tarfile.LNKTYPE, "data/covid/a.png"), "is a hard link"),
        (_tar_member("data/dev", tarfile.CHRTYPE), "is a device file"),
        (_tar_member("data/fifo", tarfile.FIFOTYPE), "is a device file or pipe"),
    ],
    ids=["absolute", "dotdot", "symlink", "hardlink", "device", "fifo"],
)
def test_unsafe_tar_member_is_refused_by_name(
    tmp_path: Path, member: tarfile.TarInfo, why: str
) -> None:
    # Given a tar with a good file followed by an unsafe member
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as bundle:
        good = tarfile.TarInfo("data/covid/a.png")
        good.size = 3
        bundle.addfile(good, io.BytesIO(b"abc"))
        bundle.addfile(member, io.BytesIO(b"") if member.isreg() else None)
    target = tmp_path / "sandbox" / "target"
    target.mkdir(parents=True)

    # When it is extracted
    with pytest.raises(PipelineError) as error:
        extract_archive(archive, target, **LIMITS)

    # Then the one-line error names the member and why, and nothing at all was written
    message = str(error.value)
    assert f"member {member.name!r} {why}" in message
    assert "\n" not in message
    assert list(target.iterdir()) == []
    assert [path.name for path in (tmp_path / "sandbox").iterdir()] == ["target"]
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize(
    ("name", "why"),
    [("../evil.png", "has a '..' component"), ("/abs/evil.png", "has an absolute path")],
)
def test_unsafe_zip_member_is_refused_by_name(tmp_path: Path, name: str, why: str) -> None:
    # Given a zip whose member would escape the target (zipfile writes such names as given)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("data/covid/a.png", b"abc")
        bundle.writestr(zipfile.ZipInfo(name), b"evil")
    target = tmp_path / "sandbox" / "target"
    target.mkdir(parents=True)

    # When it is extracted, then the error names it and nothing was written
    with pytest.raises(PipelineError, match=f"member {name!r} {why}"):
        extract_archive(archive, target, **LIMITS)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "sandbox" / "evil.png").exists()


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    # Given a zip holding a symbolic link (as `zip --symlinks` stores it)
    archive = tmp_path / "link.zip"
    link = zipfile.ZipInfo("data/covid/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(link, "/etc/passwd")
    target = tmp_path / "target"
    target.mkdir()

    # When it is extracted, then it is refused by name
    with pytest.raises(PipelineError, match="'data/covid/link.png' is a symbolic link"):
        extract_archive(archive, target, **LIMITS)
    assert list(target.iterdir()) == []


def test_unsafe_archive_source_leaves_no_raw_data(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given an archive source with a '..' member
    archive = _write_tar(tmp_path / "evil.tar", {**DATASET, "../../escaped.png": b"x"})

    # When it is ingested, then it fails and neither data/raw nor the escape exist
    with pytest.raises(PipelineError, match="'../../escaped.png' has a '..' component"):
        _ingest(tmp_path, small_params_dict, str(archive))
    assert not (tmp_path / "repo" / "data" / "raw").exists()
    assert not list(tmp_path.rglob("escaped.png"))


def test_a_file_that_is_no_archive_is_an_error(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    source = tmp_path / "images.rar"
    source.write_bytes(b"Rar!\x1a\x07\x00 not supported")
    with pytest.raises(PipelineError, match="not a folder, .zip or .tar"):
        _ingest(tmp_path, small_params_dict, str(source))


def _raw_dir_is_absent(tmp_path: Path) -> bool:
    paths = ProjectPaths(tmp_path / "repo")
    return not paths.raw_dir.exists() and not paths.manifest.exists()


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("bomb.zip", functools.partial(_write_zip, compression=zipfile.ZIP_DEFLATED)),
        ("bomb.tar.gz", functools.partial(_write_tar, mode="w:gz")),
    ],
)
def test_archive_expanding_over_max_extract_bytes_is_refused_before_extracting(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    name: str,
    writer: Callable[[Path, dict[str, bytes]], Path],
) -> None:
    # Given a small archive whose members declare 4 MB of zeros (it compresses to a few KB)
    archive = writer(tmp_path / name, {**DATASET, "Covid19-dataset/zeros.png": bytes(4_000_000)})
    assert archive.stat().st_size < 100_000
    expanded = sum(len(content) for content in DATASET.values()) + 4_000_000

    # When it is ingested with data.max_extract_bytes of 1 MB
    with pytest.raises(PipelineError) as error:
        _ingest(tmp_path, small_params_dict, str(archive), max_extract_bytes=1_000_000)

    # Then one line names the param, its value and the size the archive would expand to
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"data.max_extract_bytes = 1000000: {archive} would expand to ")
    assert f"{expanded:,} bytes in 5 members" in message
    # and nothing was extracted
    assert _raw_dir_is_absent(tmp_path)
    assert not list((tmp_path / "repo" / "data").glob(".raw*"))


@pytest.mark.parametrize(
    ("name", "writer", "count"),
    [("many.zip", _write_zip, "5"), ("many.tar", _write_tar, "more than 3")],
)
def test_archive_with_more_members_than_max_extract_files_is_refused(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    name: str,
    writer: Callable[[Path, dict[str, bytes]], Path],
    count: str,
) -> None:
    # Given an archive of 5 files (a tar's table is read only up to the limit)
    archive = writer(tmp_path / name, {**DATASET, "Covid19-dataset/extra.png": b"x"})

    # When it is ingested with data.max_extract_files = 3
    with pytest.raises(PipelineError) as error:
        _ingest(tmp_path, small_params_dict, str(archive), max_extract_files=3)

    # Then one line names the param, its value and the member count, and nothing is written
    assert str(error.value) == (
        f"data.max_extract_files = 3: {archive} holds {count} members (files and folders); "
        "raise data.max_extract_files if you trust this archive"
    )
    assert _raw_dir_is_absent(tmp_path)


def test_archive_at_the_limits_is_extracted(
    tmp_path: Path, small_params_dict: dict[str, Any]
) -> None:
    # Given an archive of exactly 4 members and their total size
    archive = _write_zip(tmp_path / "data.zip", DATASET)
    total = sum(len(content) for content in DATASET.values())

    # When it is ingested with both limits equal to those figures
    ingested = _ingest(
        tmp_path, small_params_dict, str(archive), max_extract_bytes=total, max_extract_files=4
    )

    # Then it is extracted
    assert len(ingested.manifest) == 4


@pytest.mark.parametrize(
    ("name", "writer", "keep"),
    [
        ("cut.zip", _write_zip, 0.5),
        ("cut.tar.gz", functools.partial(_write_tar, mode="w:gz"), 0.5),
        ("cut.tar.gz", functools.partial(_write_tar, mode="w:gz"), 0.005),
        ("cut.tar", _write_tar, 0.5),
        ("empty.zip", _write_zip, 0.0),
    ],
    ids=["zip", "tar.gz", "tar.gz-header", "tar", "empty-zip"],
)
def test_truncated_archive_is_called_damaged(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    name: str,
    writer: Callable[[Path, dict[str, bytes]], Path],
    keep: float,
) -> None:
    # Given an archive of incompressible files cut short, as an interrupted download leaves it
    files = {
        f"data/{label}/{index}.png": random.Random(index).randbytes(20_000)
        for label in ("covid", "normal")
        for index in range(4)
    }
    whole = writer(tmp_path / f"whole-{name}", files).read_bytes()
    archive = tmp_path / name
    archive.write_bytes(whole[: int(len(whole) * keep)])

    # When it is ingested
    with pytest.raises(PipelineError) as error:
        _ingest(tmp_path, small_params_dict, str(archive))

    # Then one line says the archive is damaged (not that it is no archive), and nothing is kept
    message = str(error.value)
    assert message.startswith(f"{archive}: damaged or truncated archive")
    assert message.endswith("; download or copy it again")
    assert "\n" not in message
    assert _raw_dir_is_absent(tmp_path)
    assert not list((tmp_path / "repo" / "data").glob(".raw*"))


def test_zip_with_a_corrupted_member_names_it(tmp_path: Path) -> None:
    # Given a zip whose second member's compressed bytes were overwritten on disk
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("data/covid/a.png", b"a" * 5000)
        bundle.writestr("data/normal/b.png", random.Random(1).randbytes(5000))
    content = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as bundle:
        second = bundle.getinfo("data/normal/b.png")
        start = second.header_offset + 30 + len(second.filename) + 100
    content[start : start + 200] = bytes(200)
    archive.write_bytes(bytes(content))
    target = tmp_path / "target"
    target.mkdir()

    # When it is extracted
    with pytest.raises(PipelineError) as error:
        extract_archive(archive, target, **LIMITS)

    # Then the damaged member is named in one line
    message = str(error.value)
    assert message.startswith(
        f"{archive}: damaged or truncated archive at member 'data/normal/b.png'"
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("members", "file_member", "folder_member", "folder"),
    [
        (["data/scan.png", "data/scan.png/"], "data/scan.png", "data/scan.png/", "data/scan.png"),
        (["data/scan.png/", "data/scan.png"], "data/scan.png", "data/scan.png/", "data/scan.png"),
        (["data/a", "data/a/b.png"], "data/a", "data/a/b.png", "data/a"),
        (["data/a/b.png", "data/a"], "data/a", "data/a/b.png", "data/a"),
    ],
    ids=["file-then-folder", "folder-then-file", "file-then-inner", "inner-then-file"],
)
def test_zip_with_a_file_and_a_folder_of_one_name_names_both(
    tmp_path: Path, members: list[str], file_member: str, folder_member: str, folder: str
) -> None:
    # Given a zip holding a file and a folder (or a file inside it) of the same path
    archive = tmp_path / "clash.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for member in members:
            bundle.writestr(member, b"" if member.endswith("/") else b"png")
    target = tmp_path / "target"
    target.mkdir()

    # When it is extracted
    with pytest.raises(PipelineError) as error:
        extract_archive(archive, target, **LIMITS)

    # Then one line names both members, and nothing was written
    assert str(error.value) == (
        f"{archive}: member {file_member!r} is a file, but member {folder_member!r} needs "
        f"{folder!r} to be a folder; rename one and pack the archive again"
    )
    assert list(target.iterdir()) == []


def test_tar_with_a_file_and_a_folder_of_one_name_names_both(tmp_path: Path) -> None:
    # Given a tar holding the file data/a and then the folder data/a
    archive = _write_tar(tmp_path / "clash.tar", {"data/a": b"png"})
    with tarfile.open(archive, "a") as bundle:
        bundle.addfile(_tar_member("data/a", tarfile.DIRTYPE))
    target = tmp_path / "target"
    target.mkdir()

    # When it is extracted, then both are named and nothing was written
    with pytest.raises(PipelineError, match="member 'data/a' is a file, but member 'data/a' needs"):
        extract_archive(archive, target, **LIMITS)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_extract_bytes": 0}, "data.max_extract_bytes = 0: Input should be greater than"),
        ({"max_extract_files": -1}, "data.max_extract_files = -1: Input should be greater than"),
        ({"max_extract_files": "many"}, "data.max_extract_files = 'many': Input should be"),
        ({"max_extract_bytes": True}, "data.max_extract_bytes = True: Input should be"),
    ],
)
def test_bad_extract_limits_are_one_line_errors(
    small_params_dict: dict[str, Any], data: dict[str, Any], message: str
) -> None:
    small_params_dict["data"].update(data)
    with pytest.raises(ParamsError, match=message) as error:
        parse_params(small_params_dict)
    assert "\n" not in str(error.value)


def test_extract_limits_default_to_20_gb_and_2_million_members(
    valid_params_dict: dict[str, Any],
) -> None:
    # Given the repository's params.yaml, then the limits are 20 GB and 2,000,000 members
    data = parse_params(valid_params_dict).data
    assert (data.max_extract_bytes, data.max_extract_files) == (20_000_000_000, 2_000_000)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder, counting GET requests and staying quiet."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server API name)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A folder served on 127.0.0.1 in a thread: (base URL, folder, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_source_is_downloaded_once_with_progress_and_verified(
    tmp_path: Path,
    small_params_dict: dict[str, Any],
    http_folder: tuple[str, Path, list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a tar.gz archive served over HTTP, pinned by its sha256
    base, served, requests = http_folder
    archive = _write_tar(served / "covid19 data.tar.gz", DATASET, mode="w:gz")
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = f"{base}/covid19%20data.tar.gz"

    # When it is ingested
    ingested = _ingest(tmp_path, small_params_dict, url, sha256=sha256)

    # Then it was downloaded once with a progress bar into data/downloads and extracted
    paths = ProjectPaths(tmp_path / "repo")
    assert requests == ["/covid19%20data.tar.gz"]
    progress = capsys.readouterr().err
    assert "download" in progress and "100%" in progress
    downloads = list(paths.downloads_dir.iterdir())
    assert [path.read_bytes() for path in downloads] == [archive.read_bytes()]
    assert {tuple(row) for row in ingested.manifest[["path", "label", "given_split"]].values} == (
        _expected_rows()
    )

    # When it is ingested again
    _ingest(tmp_path, small_params_dict, url, sha256=sha256)

    # Then the download with that hash is reused, not fetched again
    assert requests == ["/covid19%20data.tar.gz"]
    assert "already downloaded" in capsys.readouterr().out


def test_url_source_with_the_wrong_sha256_fails_and_keeps_nothing(
    tmp_path: Path, small_params_dict: dict[str, Any], http_folder: tuple[str, Path, list[str]]
) -> None:
    # Given a served archive and a sha256 that is not its own
    base, served, _requests = http_folder
    _write_zip(served / "data.zip", DATASET)
    wrong = "0" * 64

    # When it is ingested
    with pytest.raises(PipelineError) as error:
        _ingest(tmp_path, small_params_dict, f"{base}/data.zip", sha256=wrong)

    # Then the one-line error names data.sha256, and no download or raw data is kept
    message = str(error.value)
    assert message.startswith(f"data.sha256 = '{wrong}': {base}/data.zip downloaded with sha256 ")
    assert "\n" not in message
    paths = ProjectPaths(tmp_path / "repo")
    assert list(paths.downloads_dir.iterdir()) == []
    assert not paths.raw_dir.exists()


def test_unreachable_url_is_a_one_line_error(
    tmp_path: Path, small_params_dict: dict[str, Any], http_folder: tuple[str, Path, list[str]]
) -> None:
    base, _served, _requests = http_folder
    with pytest.raises(PipelineError, match=r"download failed \(HTTP 404 "):
        _ingest(tmp_path, small_params_dict, f"{base}/missing.zip", sha256="a" * 64)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "https://example.org/x.zip"}, "data.sha256 = '': a URL source needs"),
        ({"sha256": "abc"}, "data.sha256 = 'abc': must be '' or the 64 hex digits"),
        ({"source": "kaggle:just-a-name"}, "write kaggle:<owner>/<dataset>"),
        ({"layout": "folders"}, "data.layout = 'folders'"),
        ({"classes": ["covid"]}, "at least two classes"),
        ({"label_map": {"0": "1"}}, "a class name needs a letter"),
    ],
)
def test_bad_data_params_are_one_line_errors(
    small_params_dict: dict[str, Any], data: dict[str, Any], message: str
) -> None:
    small_params_dict["data"].update(data)
    with pytest.raises(ParamsError, match=message) as error:
        parse_params(small_params_dict)
    assert "\n" not in str(error.value)


def test_kaggle_source_without_kagglehub_says_how_to_install_it(
    tmp_path: Path, small_params_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Kaggle source on a machine where the optional kagglehub package cannot be imported
    monkeypatch.setitem(sys.modules, "kagglehub", None)

    # When it is ingested, then one line says what to install or do instead
    with pytest.raises(PipelineError) as error:
        _ingest(tmp_path, small_params_dict, "kaggle:prashant268/chest-xray-covid19-pneumonia")
    message = str(error.value)
    assert message.startswith("data.source = kaggle:prashant268/chest-xray-covid19-pneumonia:")
    assert "kagglehub" in message and ".[kaggle]" in message
    assert not (tmp_path / "repo" / "data" / "raw").exists()
