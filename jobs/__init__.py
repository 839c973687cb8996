"""Containerized jobs of the fraud-detection pipeline (``python -m jobs --help``)."""
