"""Print the Markdown table of every backbone for the README.

Usage: .venv/bin/python benchmarks/model_table.py [--image-size 224] [--classes 3]

Parameters count the backbone plus a softmax layer on its average-pooled features (the head's
hidden layers, set in train.head, come on top); the papers' own heads are in the tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxr.models.classifier import model_registry  # noqa: E402


def markdown_table(rows: list[dict[str, object]], image_size: int, class_count: int) -> str:
    """The registry rows as a Markdown table."""
    lines = [
        f"| model | default input (px) | minimum input (px) | ImageNet weights "
        f"| parameters ({image_size} px, {class_count} classes) |",
        "|---|---:|---:|---|---:|",
    ]
    for row in rows:
        weights = "yes" if row["imagenet_weights"] else "no: built here"
        lines.append(
            f"| {row['name']} | {row['default_image_size']} | {row['min_image_size']} "
            f"| {weights} | {row['parameters']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build every backbone once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args(argv)
    rows = model_registry(args.image_size, args.classes)
    print(markdown_table(rows, args.image_size, args.classes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
