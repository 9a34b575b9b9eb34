"""Pseudonyms: DICOM identifiers replaced by a keyed hash before they leave data/raw.

A patient's ID, a study's or an image's UID is needed to keep a patient in one split or to
join a label table, but must never reach data/interim, metrics, reports, MLflow or git. Each
is replaced by HMAC-SHA256 under a secret key of the checkout, cut to 16 hex digits: the same
value gives the same pseudonym in every run of this checkout, and nobody without the key can
test a guessed ID against it (a plain hash of a short patient ID is reversed by trying them all).

The key is 32 random bytes (64 hex digits) in `.cxr/pseudonym.key` at the checkout's root
(DVC's --temp and queued experiments under .dvc/tmp use it too), created on first use,
readable by its owner only, and ignored by git and DVC: it is no DVC dependency, and it never
leaves the checkout. Losing it changes every pseudonym after the next ingest (the patient,
study and group columns, so DVC re-runs build and what follows; the split, which depends only
on which images share a patient, and the data fingerprint stay the same); copying it to
another checkout gives the same pseudonyms there.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cxr.core.errors import PipelineError
from cxr.core.paths import workspace_root

KEY_FILE = Path(".cxr") / "pseudonym.key"
KEY_BYTES = 32
# 64 bits: a collision among a million patients has odds of about 3 in 100 million.
PSEUDONYM_DIGITS = 16


def key_path(root: Path) -> Path:
    """The pseudonym key of the checkout `root` belongs to (also from DVC's .dvc/tmp copies)."""
    return workspace_root(root) / KEY_FILE


def _read_key(path: Path) -> bytes:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise PipelineError(
            f"{path}: not a pseudonym key ({KEY_BYTES * 2} hex digits expected); restore it "
            "from a backup, or delete it to make a new one (every pseudonym then changes)"
        )
    return key


def load_or_create_key(path: Path) -> bytes:
    """The key in `path`; created once, atomically and mode 0600, when there is none."""
    if path.exists():
        return _read_key(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise PipelineError(
            f"{path}: cannot create the pseudonym key ({error.strerror or error}); DICOM "
            "identifiers need it, in a folder of the checkout this user can write"
        ) from None
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask
            handle.write(secrets.token_hex(KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # A hard link, unlike a rename, never replaces a file: when two processes create the
        # key at once, one wins and both use its key.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key(path)


def pseudonym(key: bytes, attribute: str, value: str) -> str:
    """The pseudonym of a DICOM attribute's value: 16 hex digits of its HMAC; '' stays ''."""
    if not value:
        return ""
    # The attribute is part of the message: a PatientID and a UID that happen to be equal
    # get different pseudonyms.
    message = f"{attribute}\0{value}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:PSEUDONYM_DIGITS]


@dataclass
class Pseudonyms:
    """Pseudonyms under the key of one checkout; the key is read (or made) on first use only."""

    root: Path
    _key: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> bytes:
        """The checkout's key, created when it has none."""
        if self._key is None:
            self._key = load_or_create_key(key_path(self.root))
        return self._key

    def __call__(self, attribute: str, value: str) -> str:
        """The pseudonym of `value`, the value of DICOM attribute `attribute`."""
        return pseudonym(self.key, attribute, value) if value else ""
