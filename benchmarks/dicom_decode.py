"""Images per second of build's DICOM decode into the cache versus a plain pydicom loop.

Usage: .venv/bin/python benchmarks/dicom_decode.py [--count 200] [--side 512]
           [--cache-size 256] [--workers 0] [--real DIR]

Writes `count` CT-like 16-bit slices (side x side, signed, rescale intercept -1024, a lung
window of their own) into a temporary folder, once uncompressed and once as JPEG 2000 lossless,
and times on the same files:
  (a) ours: cxr.images.decoding.decode_files, as build runs it (processes on every core,
      sha256 and perceptual hash included, window auto, JPEG 2000 at the reduction the cache
      needs); also in one process, to separate the per-image gain from the parallel one. The
      process start-up (a forkserver importing the decoders, once per stage run) is timed
      once, on two files, and printed apart;
  (b) plain: pydicom.dcmread(path).pixel_array, apply_modality_lut + apply_voi_lut to 0-255
      and resize_square to the cache size, one file after another.
Then the same over the real slices of --real (default ../shared/datasets/covid-ct-sbu-dicom)
when present. Every file is read once first, so both measure decoding, not the disk.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxr.core.processes import available_cores  # noqa: E402
from cxr.images.decoding import decode_file, decode_files, resize_square  # noqa: E402

DEFAULT_REAL = ROOT.parent / "shared" / "datasets" / "covid-ct-sbu-dicom"
MAX_PIXELS = 50_000_000


def ct_slice(side: int, seed: int) -> np.ndarray:
    """Stored values of a CT-like slice: air, an elliptic body, two lungs, noise (int16)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    hounsfield = np.full((side, side), -1000.0)
    hounsfield[((y - 0.5) / 0.43) ** 2 + ((x - 0.5) / 0.36) ** 2 < 1] = 40.0
    lungs = ((y - 0.48) / 0.24) ** 2 + ((np.abs(x - 0.5) - 0.15) / 0.1) ** 2 < 1
    hounsfield[lungs] = -850.0
    hounsfield += rng.normal(0, 20, hounsfield.shape)
    return np.round(hounsfield + 1024).astype(np.int16)


def write_slice(path: Path, stored: np.ndarray, syntax: str) -> None:
    """`stored` as a CT image in the DICOM file format, compressed by pydicom when asked."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = uid.CTImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = uid.generate_uid()
    dataset.Modality, dataset.SamplesPerPixel = "CT", 1
    dataset.Rows, dataset.Columns = stored.shape
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation = 1
    dataset.RescaleIntercept, dataset.RescaleSlope = -1024, 1
    dataset.WindowCenter, dataset.WindowWidth = -600, 1500
    dataset.PixelData = stored.tobytes()
    if uid.UID(syntax).is_encapsulated:
        dataset.compress(syntax, stored)
    dataset.save_as(path, enforce_file_format=True)


def plain_square(file: Path, cache_size: int) -> np.ndarray:
    """Read, decode, modality LUT and VOI to 0-255 and resize one file, pixel by pixel."""
    dataset = pydicom.dcmread(file)
    stored = dataset.pixel_array
    shown = apply_voi_lut(apply_modality_lut(stored, dataset), dataset)
    if "WindowCenter" in dataset:
        # The window's black and white: where the far ends of any input land.
        ends = apply_voi_lut(np.array([-np.inf, np.inf]), dataset)
        black, white = float(ends[0]), float(ends[1])
    else:
        black, white = float(shown.min()), float(shown.max())
    unit = np.clip((shown - black) / ((white - black) or 1.0), 0.0, 1.0)
    return resize_square(np.rint(unit * 255.0).astype(np.uint8), cache_size, "pad")


def plain_loop(files: list[Path], cache_size: int) -> int:
    """plain_square over every file, one after another; return how many decoded."""
    for file in files:
        plain_square(file, cache_size)
    return len(files)


def ours(root: Path, relatives: list[str], cache_size: int, workers: int) -> int:
    """The build's decode_files over the files; return how many decoded."""
    results = decode_files(root, relatives, MAX_PIXELS, cache_size, "pad", workers, "auto")
    return sum(result.pixels is not None for result in results)


def timed(run: Callable[[], int]) -> tuple[float, int]:
    """Seconds `run` takes and what it returns."""
    start = time.perf_counter()
    count = run()
    return time.perf_counter() - start, count


def compare(name: str, root: Path, cache_size: int, workers: int) -> None:
    """Time ours (all cores, then one process) and the plain loop on every .dcm under root."""
    files = sorted(root.rglob("*.dcm"))
    relatives = [file.relative_to(root).as_posix() for file in files]
    megabytes = sum(len(file.read_bytes()) for file in files) / 1e6  # warms the page cache
    plain_seconds, plain_count = timed(lambda: plain_loop(files, cache_size))
    one_seconds, one_count = timed(lambda: ours(root, relatives, cache_size, 1))
    all_seconds, all_count = timed(lambda: ours(root, relatives, cache_size, workers))
    plain_rate = plain_count / plain_seconds
    # The same pixels? Exactly for uncompressed files; JPEG 2000 is reduced, not resized.
    cached = decode_file(root, relatives[0], MAX_PIXELS, cache_size, "pad").pixels
    difference = np.abs(plain_square(files[0], cache_size).astype(int) - np.asarray(cached))
    print(f"{name}: {len(files)} files, {megabytes:.0f} MB, cache {cache_size} px")
    print(
        f"  cache pixels of the first file against the plain loop's: max difference "
        f"{difference.max()}, mean {difference.mean():.2f} grey levels"
    )
    print(f"  plain pydicom loop, 1 process : {plain_rate:7.1f} images/s ({plain_seconds:.2f} s)")
    print(
        f"  ours decode_files, 1 process  : {one_count / one_seconds:7.1f} images/s "
        f"({one_seconds:.2f} s): {one_count / one_seconds / plain_rate:.2f}x"
    )
    print(
        f"  ours decode_files, {workers} proc.  : {all_count / all_seconds:7.1f} images/s "
        f"({all_seconds:.2f} s, sha256 and perceptual hash included): "
        f"{all_count / all_seconds / plain_rate:.2f}x"
    )


def main() -> int:
    """Write the slices, time both ways on each set and print images / second and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="slices per transfer syntax")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0 = every available core")
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL)
    args = parser.parse_args()
    workers = args.workers or available_cores()
    print(f"command: .venv/bin/python benchmarks/dicom_decode.py {shlex.join(sys.argv[1:])}")
    # Other work on the machine takes cores from the worker processes: say how much there was.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"pydicom {pydicom.__version__}, {workers} worker process(es), load average {load}")
    with tempfile.TemporaryDirectory(prefix="dicom-bench-") as folder:
        sets = {}
        for label, syntax in (
            ("uncompressed", uid.ExplicitVRLittleEndian),
            ("JPEG 2000 lossless", uid.JPEG2000Lossless),
        ):
            root = sets[label] = Path(folder) / label.replace(" ", "-")
            root.mkdir()
            for index in range(args.count):
                write_slice(root / f"{index:04d}.dcm", ct_slice(args.side, index), syntax)
        start_seconds, _ = timed(
            lambda: ours(sets["uncompressed"], ["0000.dcm", "0001.dcm"], args.cache_size, workers)
        )
        print(f"process start-up, once per build: {start_seconds:.2f} s")
        for label, root in sets.items():
            compare(f"{label} {args.side}x{args.side} 16-bit", root, args.cache_size, workers)
    if args.real.is_dir():
        compare(f"real: {args.real.name}", args.real, args.cache_size, workers)
    else:
        print(f"real: {args.real} absent, skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
