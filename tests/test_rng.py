"""pyro_gen.rng.seeded: a seeded block that leaves torch's generator as it found it."""

import torch

from pyro_gen.rng import seeded


def test_a_seeded_block_repeats_its_draws_and_restores_the_outer_stream():
    torch.manual_seed(123)
    expected_outer = torch.rand(3)  # what the outer stream gives without the block
    torch.manual_seed(123)
    with seeded(7):
        a = torch.rand(4)
    with seeded(7, "cpu"):
        b = torch.rand(4)
    assert torch.equal(a, b)
    assert torch.equal(a, torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.rand(3), expected_outer)


def test_the_stream_is_restored_when_the_block_raises():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    try:
        with seeded(1):
            torch.rand(10)
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert torch.equal(torch.get_rng_state(), before)
