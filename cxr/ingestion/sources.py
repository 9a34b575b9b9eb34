"""Where data.source points: a folder, an archive, a pinned URL, a Kaggle dataset or DICOMweb."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Literal, TypeVar

from cxr.core.errors import PipelineError
from cxr.core.outputs import staged_file
from cxr.core.params import DICOMWEB_PREFIX, DicomwebParams
from cxr.core.progress import BYTES, Progress, track
from cxr.core.pseudonyms import Pseudonyms
from cxr.ingestion.dicomweb import TOKEN_VARIABLE, fetch_dicomweb
from cxr.ingestion.layouts import Rejection

URL_SCHEMES = ("http://", "https://")
KAGGLE_PREFIX = "kaggle:"
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60

# What reading a damaged or truncated archive raises: zipfile's and tarfile's own errors, the
# decompressors' (gzip's BadGzipFile and bz2's invalid stream are OSErrors), and an early end.
ARCHIVE_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    OSError,
)

# First bytes of a zip (local file header, empty archive, spanned) and of the compressions a
# tar comes in (gzip, bzip2, xz); a plain tar says ustar at byte 257.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
TarReadMode = Literal["r:", "r:gz", "r:bz2", "r:xz"]
TAR_COMPRESSIONS: dict[bytes, TarReadMode] = {
    b"\x1f\x8b": "r:gz",
    b"BZh": "r:bz2",
    b"\xfd7zXZ\x00": "r:xz",
}
TAR_MAGIC_OFFSET = 257
TAR_MAGIC = b"ustar"
TAR_SUFFIXES = (".tar", ".tgz", ".tbz", ".tbz2", ".txz", ".gz", ".bz2", ".xz")

# An archive library's own record of a member (zipfile.ZipInfo, tarfile.TarInfo).
Info = TypeVar("Info")


@dataclass(frozen=True)
class ResolvedSource:
    """A source on local disk: a folder to copy or an archive to extract."""

    path: Path
    is_archive: bool
    # When only some files make the dataset, each as (its path in the dataset, the file to
    # copy): a DICOMweb query's instances in data/downloads, and its label table.
    files: tuple[tuple[str, Path], ...] | None = None


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
                # Shown whatever the size: a download's time depends on the network.
                Progress(f"download {target.name}", BYTES, total, min_total=0) as progress,
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


def dicomweb_source(
    source: str, dicomweb: DicomwebParams, table: str, workspace: Path, downloads_dir: Path
) -> ResolvedSource:
    """The instances data.dicomweb selects, fetched into downloads_dir, and the label table."""
    # Checked before anything is fetched: the download folder holds images only.
    table_path = workspace / table
    if not table_path.is_file() or not os.access(table_path, os.R_OK):
        raise PipelineError(
            f"data.csv.file = {table!r}: no readable table {table_path}; a dicomweb+ source's "
            "labels come from a table in the checkout (e.g. StudyInstanceUID,label rows)"
        )
    fetched = fetch_dicomweb(
        source, dicomweb, downloads_dir, os.environ.get(TOKEN_VARIABLE, "").strip()
    )
    # Named in data/raw by the UIDs' pseudonyms: a path reaches the manifest, splits and MLflow.
    pseudonyms = Pseudonyms(workspace)
    files = [
        (instance.pseudonymous(pseudonyms), fetched.folder / instance.relative)
        for instance in fetched.instances
    ]
    return ResolvedSource(fetched.folder, False, (*files, (table, table_path)))


def resolve_source(
    source: str,
    sha256: str,
    workspace: Path,
    downloads_dir: Path,
    dicomweb: DicomwebParams | None = None,
    table: str = "",
) -> ResolvedSource:
    """Turn data.source into a local folder or archive, downloading it when it is remote.

    A dicomweb+ source needs data.dicomweb and its label table, data.csv.file in the checkout.
    """
    downloads_dir.mkdir(parents=True, exist_ok=True)
    if source.startswith(DICOMWEB_PREFIX):
        assert dicomweb is not None, "a dicomweb+ source needs data.dicomweb"
        return dicomweb_source(source, dicomweb, table, workspace, downloads_dir)
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


def copy_tree(source: Path, target: Path) -> list[Rejection]:
    """Copy the plain files and folders of source into the empty folder target; never a link.

    A symbolic link (to a file or a folder, out of the source or inside it) or a pipe, socket or
    device file is neither followed nor copied: each comes back as a Rejection (its path inside
    the source) for data/interim/ingest_rejected.csv.
    """
    if target.resolve().is_relative_to(source.resolve()):
        # Walking a folder that holds the copy being written would copy it into itself forever.
        raise PipelineError(
            f"data.source = {str(source)!r}: holds the folder ingest copies it into (the "
            "checkout's data folder); point data.source at the dataset folder itself"
        )
    skipped: list[Rejection] = []
    pending = [PurePosixPath()]
    with Progress("copying", "files") as progress:
        while pending:
            subfolders, left_out = _copy_folder(source, target, pending.pop(), progress)
            pending.extend(subfolders)
            skipped.extend(left_out)
    return sorted(skipped, key=lambda rejection: rejection.path)


def copy_files(files: tuple[tuple[str, Path], ...], target: Path) -> None:
    """Copy each (path in the dataset, file) into the empty folder target at that path."""
    for inner, path in track(files, "copying", "files"):
        destination = target / inner
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(path, destination)
        except OSError as error:
            # Not named: a DICOMweb file's name is a UID, which is never shown.
            raise PipelineError(
                f"cannot copy the source's files into data/raw ({error.strerror or error}); "
                "check the free disk space"
            ) from None


def _copy_folder(
    source: Path, target: Path, folder: PurePosixPath, progress: Progress
) -> tuple[list[PurePosixPath], list[Rejection]]:
    """Copy one folder's files and create its subfolders: (subfolders to copy, files left out)."""
    subfolders: list[PurePosixPath] = []
    skipped: list[Rejection] = []
    try:
        with os.scandir(source / folder) as listing:
            children = sorted(listing, key=lambda child: child.name)
    except OSError as error:
        raise _copy_failed(source / folder, error) from None
    for child in children:
        inner = folder / child.name
        try:
            if child.is_symlink():
                skipped.append(
                    Rejection(
                        inner.as_posix(),
                        "symbolic_link",
                        f"a symbolic link to {os.readlink(child.path)!r}, not followed; "
                        "copy the file or folder itself into the source to use it",
                    )
                )
            elif child.is_dir(follow_symlinks=False):
                (target / inner).mkdir()
                subfolders.append(inner)
            elif child.is_file(follow_symlinks=False):
                # Content only: the copy gets the umask's modes, so a read-only source (a
                # mounted dataset) still gives a copy DVC can replace.
                shutil.copyfile(child.path, target / inner, follow_symlinks=False)
                progress.update()
            else:
                # Reading a pipe would block ingest forever; a device is never an image.
                skipped.append(
                    Rejection(
                        inner.as_posix(),
                        "not_a_regular_file",
                        "a pipe, socket or device file, not read",
                    )
                )
        except OSError as error:
            raise _copy_failed(source / inner, error) from None
    return subfolders, skipped


def _copy_failed(path: Path, error: OSError) -> PipelineError:
    return PipelineError(
        f"{path}: cannot copy it into data/raw ({error.strerror or error}"
        f"{f': {error.filename}' if error.filename else ''}); check its permissions and the free "
        "disk space"
    )


@dataclass(frozen=True)
class _Member:
    """One member of an archive's table: its name as stored, folder or file, uncompressed size."""

    name: str
    is_dir: bool
    size: int


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


def _damaged(archive: Path, error: BaseException, member: str = "") -> PipelineError:
    where = f" at member {member!r}" if member else ""
    # tarfile re-raises a decompressor's error as "not a gzip file"; the cause says truncated.
    while error.__cause__ is not None:
        error = error.__cause__
    reason = " ".join(str(error).split()) or type(error).__name__
    return PipelineError(
        f"{archive}: damaged or truncated archive{where} ({reason}); download or copy it again"
    )


def _inside(archive: Path, target: Path, name: str) -> Path:
    """The destination of a member, checked to resolve inside target (named by the archive)."""
    destination = (target / name).resolve()
    if not destination.is_relative_to(target.resolve()):
        raise _refuse(archive, name, "resolves outside the extraction folder")
    return destination


def _check_table(
    archive: Path, members: list[_Member], max_bytes: int, max_files: int, *, complete: bool
) -> None:
    """Refuse, before anything is written, an archive over the limits or with a name clash.

    complete is False when reading the table stopped after max_files + 1 members.
    """
    if len(members) > max_files:
        count = f"{len(members):,}" if complete else f"more than {max_files:,}"
        raise PipelineError(
            f"data.max_extract_files = {max_files}: {archive} holds {count} members (files and "
            "folders); raise data.max_extract_files if you trust this archive"
        )
    total = sum(member.size for member in members)
    if total > max_bytes:
        raise PipelineError(
            f"data.max_extract_bytes = {max_bytes}: {archive} would expand to {total:,} bytes "
            f"in {len(members):,} members; raise data.max_extract_bytes if you trust this archive "
            "and the disk holds it twice (data/raw and the DVC cache)"
        )
    # The path each member lands on (as the filesystem splits it), and which member first makes
    # each path a folder: a file there too could not be written.
    files: dict[tuple[str, ...], str] = {}
    folders: dict[tuple[str, ...], str] = {}
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.is_dir:
            folders.setdefault(parts, member.name)
        else:
            files.setdefault(parts, member.name)
        for depth in range(1, len(parts)):
            folders.setdefault(parts[:depth], member.name)
    for parts, file_member in files.items():
        if parts in folders:
            raise PipelineError(
                f"{archive}: member {file_member!r} is a file, but member {folders[parts]!r} "
                f"needs {'/'.join(parts)!r} to be a folder; rename one and pack the archive again"
            )


def _read_chunk(archive: Path, name: str, source: IO[bytes]) -> bytes:
    """The next chunk of a member's bytes; a read failure is a damaged archive, named."""
    try:
        return source.read(DOWNLOAD_CHUNK)
    except ARCHIVE_READ_ERRORS as error:
        raise _damaged(archive, error, name) from None


def _copy_member(archive: Path, name: str, source: IO[bytes], destination: Path) -> None:
    """Stream one member's bytes into destination, never the whole member in memory."""
    try:
        with destination.open("wb") as handle:
            while chunk := _read_chunk(archive, name, source):
                handle.write(chunk)
    except OSError as error:
        raise PipelineError(
            f"{destination}: cannot write member {name!r} of {archive} "
            f"({error.strerror or error}); check the free disk space"
        ) from None


def _write_members(
    archive: Path,
    target: Path,
    members: list[tuple[_Member, Info]],
    max_bytes: int,
    max_files: int,
    open_member: Callable[[Info], IO[bytes] | None],
    *,
    complete: bool,
) -> None:
    """Check a safe member table against the limits, then write its folders and files.

    open_member opens one member's bytes (None when it is not a file); complete is False when
    reading the table stopped after max_files + 1 members.
    """
    _check_table(
        archive, [member for member, _ in members], max_bytes, max_files, complete=complete
    )
    for member, info in track(members, "extracting", "members"):
        destination = _inside(archive, target, member.name)
        if member.is_dir:
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            source = open_member(info)
        except ARCHIVE_READ_ERRORS as error:
            raise _damaged(archive, error, member.name) from None
        if source is None:  # not a file: excluded before, but tarfile's type allows it
            raise _refuse(archive, member.name, "is not a plain file or folder")
        with source:
            _copy_member(archive, member.name, source, destination)


def _extract_zip(archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
    try:
        bundle = zipfile.ZipFile(archive)
    except ARCHIVE_READ_ERRORS as error:
        raise _damaged(archive, error) from None

    def open_member(info: zipfile.ZipInfo) -> IO[bytes]:
        try:
            return bundle.open(info)
        except (RuntimeError, NotImplementedError) as error:
            raise PipelineError(
                f"{archive}: member {info.filename!r} cannot be extracted ({error}); "
                "repack the archive without encryption, with deflate, bzip2 or lzma"
            ) from None

    with bundle:
        infos = bundle.infolist()
        for info in infos:
            why = _unsafe_name(info.filename)
            mode = info.external_attr >> 16
            if why is None and stat.S_ISLNK(mode):
                why = "is a symbolic link"
            elif why is None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
                why = "is a device or pipe"
            if why:
                raise _refuse(archive, info.filename, why)
        # zipfile never yields more than a member's declared file_size, so the table bounds it.
        members = [(_Member(info.filename, info.is_dir(), info.file_size), info) for info in infos]
        _write_members(archive, target, members, max_bytes, max_files, open_member, complete=True)


def _tar_table(
    archive: Path, bundle: tarfile.TarFile, target: Path, max_files: int
) -> list[tarfile.TarInfo]:
    """Every member of an open tar, each checked safe; stops reading past max_files members."""
    members: list[tarfile.TarInfo] = []
    # A compressed tar is decompressed whole to read its table: as long as extracting it.
    headers = track(bundle, f"reading {archive.name}", "members")
    while len(members) <= max_files:
        # Only reading the next header can meet damage; the checks below name their member.
        try:
            member = next(headers, None)
        except ARCHIVE_READ_ERRORS as error:
            raise _damaged(archive, error) from None
        if member is None:
            break
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
        members.append(member)
    return members


def _open_tar(archive: Path) -> tarfile.TarFile:
    """The archive opened for reading in its compression; a damaged one is named."""
    with archive.open("rb") as handle:
        head = handle.read(max(len(magic) for magic in TAR_COMPRESSIONS))
    # The compression its first bytes name, so a damaged stream is reported as what it is, not
    # as "no compression method could open it".
    mode: TarReadMode = next(
        (mode for magic, mode in TAR_COMPRESSIONS.items() if head.startswith(magic)), "r:"
    )
    try:
        return tarfile.open(archive, mode)
    except ARCHIVE_READ_ERRORS as error:
        raise _damaged(archive, error) from None


def _extract_tar(archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
    with _open_tar(archive) as bundle:
        infos = _tar_table(archive, bundle, target, max_files)
        members = [(_Member(info.name, info.isdir(), info.size), info) for info in infos]
        # _tar_table let only folders and plain files through; they are written with the umask's
        # modes, as the data filter would, without the archive's owners or permissions.
        _write_members(
            archive,
            target,
            members,
            max_bytes,
            max_files,
            bundle.extractfile,
            complete=len(infos) <= max_files,
        )


def _archive_format(archive: Path) -> str | None:
    """'zip' or 'tar' by content, or, when the content is damaged, by magic bytes and suffix."""
    if zipfile.is_zipfile(archive):
        return "zip"
    with archive.open("rb") as handle:
        head = handle.read(TAR_MAGIC_OFFSET + len(TAR_MAGIC))
    name = archive.name.lower()
    # A truncated zip has lost its central directory at the end, but not its first bytes.
    if head.startswith(ZIP_MAGIC) or name.endswith(".zip"):
        return "zip"
    if (
        head.startswith(tuple(TAR_COMPRESSIONS))
        or head[TAR_MAGIC_OFFSET:].startswith(TAR_MAGIC)
        or name.endswith(TAR_SUFFIXES)
    ):
        return "tar"
    try:
        # Old tars without the ustar magic are only recognised by parsing a header.
        return "tar" if tarfile.is_tarfile(archive) else None
    except ARCHIVE_READ_ERRORS:
        return None


def extract_archive(archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
    """Extract a .zip or .tar[.gz|.bz2|.xz] archive into target, refusing unsafe members.

    Nothing is written unless the member table is safe, has no file / folder name clash and
    stays within max_bytes uncompressed (data.max_extract_bytes) and max_files members
    (data.max_extract_files).
    """
    try:
        archive_format = _archive_format(archive)
    except OSError as error:
        raise PipelineError(f"{archive}: cannot read it ({error.strerror or error})") from None
    if archive_format == "zip":
        _extract_zip(archive, target, max_bytes, max_files)
    elif archive_format == "tar":
        _extract_tar(archive, target, max_bytes, max_files)
    else:
        raise PipelineError(
            f"data.source = {str(archive)!r}: not a folder, .zip or .tar[.gz] archive"
        )
