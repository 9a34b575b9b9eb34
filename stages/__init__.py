"""cxr-pipeline: DVC stages that ingest, split, train, evaluate and compare chest X-ray classifiers."""
