"""The six DVC stages, one entry point each (`python -m stages.<name>`); the code is in cxr/."""
