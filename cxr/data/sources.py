"""Where data.source points: a folder, an archive, a pinned URL or a Kaggle dataset."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_file

URL_SCHEMES = ("http://", "https://")
KAGGLE_PREFIX = "kaggle:"
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class ResolvedSource:
    """A source on local disk: a folder to copy or an archive to extract."""

    path: Path
    is_archive: bool


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks by hashlib."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _download_name(url: str) -> str:
    """A safe file name for a download, from the last part of the URL path."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return name or "download"


def download(url: str, sha256: str, downloads_dir: Path) -> Path:
    """Fetch url into downloads_dir with a progress bar; reuse a file with the same sha256."""
    target = downloads_dir / f"{sha256[:12]}-{_download_name(url)}"
    if target.is_file() and file_sha256(target) == sha256:
        print(f"ingest: {url} already downloaded as {target} (sha256 matches)")
        return target
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            staged_file(target) as temporary,
        ):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with (
                temporary.open("wb") as handle,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"download {target.name}",
                    file=sys.stderr,
                    mininterval=0.5,
                ) as progress,
            ):
                for chunk in iter(lambda: response.read(DOWNLOAD_CHUNK), b""):
                    handle.write(chunk)
                    digest.update(chunk)
                    progress.update(len(chunk))
            if digest.hexdigest() != sha256:
                # Leaving the block by raising discards the temporary file.
                raise PipelineError(
                    f"data.sha256 = {sha256!r}: {url} downloaded with sha256 "
                    f"{digest.hexdigest()}; check the URL or update data.sha256"
                )
    except (urllib.error.URLError, OSError, ValueError) as error:
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        else:
            reason = str(getattr(error, "reason", error))
        raise PipelineError(f"data.source = {url!r}: download failed ({reason})") from None
    return target


def kaggle_download(handle: str, downloads_dir: Path) -> Path:
    """Download a Kaggle dataset through the optional kagglehub package; return its folder."""
    try:
        import kagglehub  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise PipelineError(
            f"data.source = {KAGGLE_PREFIX}{handle!s}: needs the optional kagglehub package "
            "(pip install -e '.[kaggle]') and Kaggle credentials; or download the archive "
            "yourself and set data.source to its path"
        ) from None
    # kagglehub keeps (and reuses) its downloads under KAGGLEHUB_CACHE: the DVC-tracked folder.
    previous = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = str(downloads_dir / "kaggle")
    try:
        folder = kagglehub.dataset_download(handle)
    except Exception as error:  # kagglehub raises many kinds (HTTP, auth, offline)
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PipelineError(
            f"data.source = {KAGGLE_PREFIX}{handle}: Kaggle download failed ({first_line}); "
            "check the handle, your credentials and the network"
        ) from None
    finally:
        if previous is None:
            os.environ.pop("KAGGLEHUB_CACHE", None)
        else:
            os.environ["KAGGLEHUB_CACHE"] = previous
    return Path(folder)


def resolve_source(
    source: str, sha256: str, workspace: Path, downloads_dir: Path
) -> ResolvedSource:
    """Turn data.source into a local folder or archive, downloading it when it is remote."""
    downloads_dir.mkdir(parents=True, exist_ok=True)
    if source.startswith(URL_SCHEMES):
        return ResolvedSource(download(source, sha256, downloads_dir), is_archive=True)
    if source.startswith(KAGGLE_PREFIX):
        folder = kaggle_download(source.removeprefix(KAGGLE_PREFIX), downloads_dir)
        return ResolvedSource(folder, is_archive=not folder.is_dir())
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = workspace / path
    if path.is_dir():
        return ResolvedSource(path, is_archive=False)
    if path.is_file():
        return ResolvedSource(path, is_archive=True)
    raise PipelineError(
        f"data.source = {source!r}: not found ({path}); use `synthetic`, a folder, a .zip or "
        ".tar[.gz] archive, an http(s) URL with data.sha256, or kaggle:<owner>/<dataset>"
    )


def copy_tree(source: Path, target: Path) -> None:
    """Copy a source folder as it is (hidden files too) into the empty folder target."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    # A read-only source (a mounted dataset) would give a read-only copy DVC cannot replace.
    for folder, _dirs, files in os.walk(target):
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)


def _unsafe_name(name: str) -> str | None:
    """Why a member name could land outside the target, or None when it is safe."""
    if not name or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "has an absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "has a '..' component"
    return None


def _refuse(archive: Path, member: str, why: str) -> PipelineError:
    return PipelineError(
        f"{archive}: member {member!r} {why}; refusing to extract this archive "
        "(only plain files and folders inside the target are allowed)"
    )


def _inside(archive: Path, target: Path, name: str) -> Path:
    """The destination of a member, checked to resolve inside target (named by the archive)."""
    destination = (target / name).resolve()
    if not destination.is_relative_to(target.resolve()):
        raise _refuse(archive, name, "resolves outside the extraction folder")
    return destination


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        for info in members:
            why = _unsafe_name(info.filename)
            mode = info.external_attr >> 16
            if why is None and stat.S_ISLNK(mode):
                why = "is a symbolic link"
            elif why is None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
                why = "is a device or pipe"
            if why:
                raise _refuse(archive, info.filename, why)
        for info in members:
            destination = _inside(archive, target, info.filename)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source, destination.open("wb") as handle:
                shutil.copyfileobj(source, handle, DOWNLOAD_CHUNK)


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:*") as bundle:
        members = bundle.getmembers()
        for member in members:
            why = _unsafe_name(member.name)
            if why is None and member.issym():
                why = f"is a symbolic link (to {member.linkname!r})"
            elif why is None and member.islnk():
                why = f"is a hard link (to {member.linkname!r})"
            elif why is None and (member.isdev() or member.isfifo()):
                why = "is a device file or pipe"
            elif why is None and not (member.isfile() or member.isdir()):
                why = "is not a plain file or folder"
            if why:
                raise _refuse(archive, member.name, why)
            _inside(archive, target, member.name)
        # The data filter also drops unsafe permissions and ownership; the checks above name
        # the offending member before anything is written.
        bundle.extractall(target, members=members, filter="data")


def extract_archive(archive: Path, target: Path) -> None:
    """Extract a .zip or .tar[.gz|.bz2|.xz] archive into target, refusing unsafe members."""
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, target)
        else:
            raise PipelineError(
                f"data.source = {str(archive)!r}: not a folder, .zip or .tar[.gz] archive"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise PipelineError(f"{archive}: damaged archive ({error})") from None
