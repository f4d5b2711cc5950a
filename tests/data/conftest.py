"""Fixtures for the data tests: the offline dataset copies in ``shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest

# The repository sits next to the ``shared`` folder: <parent>/main/tests/data/conftest.py.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of offline dataset copies; skips the test if it is absent."""
    if not (SHARED_DATA / "binarized_mnist.npz").is_file():
        pytest.skip(f"offline dataset copies not found in {SHARED_DATA}")
    return SHARED_DATA
