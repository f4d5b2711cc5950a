"""Shared pytest configuration (Pyro style): every test starts seeded with an empty param store.

The ``slow`` marker is registered in ``pyproject.toml`` (``[tool.pytest.ini_options]``).
Pyro's validation is left at its default.
"""

import os

import pyro
import pytest
import torch

# The tests use tiny networks, for which intra-op threads cost more than they give (much
# more on a shared machine); set OMP_NUM_THREADS to choose another count.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_clear_param_store():
    """Seed every generator (torch, numpy, random) and start from an empty Pyro param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True, scope="session")
def _feature_cache_in_a_temporary_directory(tmp_path_factory):
    """Trained feature extractors are cached per session in a temporary directory, not in the user's ~/.cache."""
    if "PYRO_GEN_CACHE" in os.environ:
        yield
        return
    os.environ["PYRO_GEN_CACHE"] = str(tmp_path_factory.mktemp("pyro_gen_cache"))
    yield
    os.environ.pop("PYRO_GEN_CACHE", None)
