"""cxr-pipeline: DVC stages that ingest, split, train, evaluate and compare X-ray classifiers."""
