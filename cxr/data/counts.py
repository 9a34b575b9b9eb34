"""Images per class, as the metrics JSON of ingest, build and split records them."""

from __future__ import annotations

import pandas as pd


def label_counts(labels: pd.Series) -> dict[str, int]:
    """How often each label occurs, sorted by label, with plain str keys and int values."""
    return {str(label): int(count) for label, count in labels.value_counts().sort_index().items()}
