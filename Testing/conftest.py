"""Shared pytest fixtures: paths to the real data under Testing/Data."""

from pathlib import Path

import pytest

TESTING_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return TESTING_DIR / "Data"


@pytest.fixture(scope="session")
def totalseg_dir(data_dir) -> Path:
    """Real abdominal CT fixtures (TotalSegmentator test files): a DICOM series, a small NIfTI CT, liver masks."""
    return data_dir / "totalsegmentator"
