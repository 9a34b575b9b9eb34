"""Stage ingest: resolve data.source into data/raw/<class>/<file>, never touching the source."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from stages.config import DataParams, load_params
from stages.errors import PipelineError, report_errors
from stages.outputs import staged_dir
from stages.paths import paths_from_argv, workspace_root
from stages.phantoms import write_phantom_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def copy_class_folders(source: Path, target: Path) -> dict[str, int]:
    """Copy <source>/<class>/*.png|jpg|jpeg into target/<class>/; return images per class."""
    if not source.is_dir():
        raise PipelineError(
            f"data.source = {str(source)!r}: not a directory; use `synthetic` or a folder of "
            "class folders <root>/<class>/*.png|jpg|jpeg"
        )
    counts: dict[str, int] = {}
    for class_dir in sorted(path for path in source.iterdir() if path.is_dir()):
        images = sorted(
            path
            for path in class_dir.iterdir()
            # Hidden files (macOS ._name.png resource forks, editors' temp files) are not images.
            if path.is_file()
            and path.suffix.lower() in IMAGE_SUFFIXES
            and not path.name.startswith(".")
        )
        if not images:
            continue
        (target / class_dir.name).mkdir()
        for image in images:
            shutil.copy2(image, target / class_dir.name / image.name)
        counts[class_dir.name] = len(images)
    if len(counts) < 2:
        raise PipelineError(
            f"data.source = {str(source)!r}: found {len(counts)} class folder(s) with "
            "images; need at least two folders <root>/<class>/ holding .png, .jpg or .jpeg files"
        )
    return counts


def ingest(data: DataParams, root: Path, raw_dir: Path) -> dict[str, int]:
    """Write the images of data.source into raw_dir atomically; return images per class."""
    with staged_dir(raw_dir) as staging:
        if data.source == "synthetic":
            synthetic = data.synthetic
            return write_phantom_dataset(
                staging,
                synthetic.counts,
                synthetic.image_size,
                synthetic.difficulty,
                synthetic.seed,
            )
        source = Path(data.source).expanduser()
        if not source.is_absolute():
            source = workspace_root(root) / source
        return copy_class_folders(source, staging)


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ingest stage from the repository root."""
    paths = paths_from_argv(argv, __doc__)
    params = load_params(paths.params)
    counts = ingest(params.data, paths.root, paths.raw_dir)
    print(f"ingest: {sum(counts.values())} images in {len(counts)} classes -> {paths.raw_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
