"""Ingest: a data source (folder, archive, URL, Kaggle, phantoms) into data/raw and a manifest."""
