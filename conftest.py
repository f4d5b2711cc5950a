"""Shared pytest configuration (Pyro style): every test starts seeded with an empty param store.

The ``slow`` marker is registered in ``pyproject.toml`` (``[tool.pytest.ini_options]``).
Pyro's validation is left at its default.
"""

import pyro
import pytest


@pytest.fixture(autouse=True)
def _seed_and_clear_param_store():
    """Seed every generator (torch, numpy, random) and start from an empty Pyro param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
