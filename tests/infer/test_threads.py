"""Intra-op threads and CPU binding of a fit (issue #12 item 5): the rules of ``choose_threads``, the FLOP count
they read, the binding of data-parallel ranks to disjoint CPU shares, and what the trainer records and restores."""

import os

import pytest
import torch

from pyro_gen import Trainer, make_guide, vae
from pyro_gen.errors import ConfigError
from pyro_gen.infer import trainer as trainer_module
from pyro_gen.infer.trainer import FLOPS_PER_THREAD, bind_rank_cpus, choose_threads, seed_draws, step_flops


def test_a_requested_count_wins():
    assert choose_threads(3, 1e15, ranks_on_this_machine=4) == (3, "train.threads")


@pytest.mark.parametrize("cpus, ranks, flops, expected", [
    (8, 1, 1e15, 8),  # a big step: every usable CPU
    (8, 2, 1e15, 4),  # an equal share per rank on the machine
    (8, 3, 1e15, 2),
    (2, 4, 1e15, 1),  # more ranks than CPUs: one each
    (8, 1, 3 * FLOPS_PER_THREAD, 3),  # one thread per FLOPS_PER_THREAD of a step
    (8, 1, 0.5 * FLOPS_PER_THREAD, 1),  # a small step runs on one thread
    (8, 2, None, 4),  # step size unknown: the share
])  # fmt: skip
def test_auto_threads_follow_the_cpus_the_ranks_and_the_step(monkeypatch, cpus, ranks, flops, expected):
    monkeypatch.setattr(trainer_module, "usable_cpus", lambda: cpus)
    n, rule = choose_threads(None, flops, ranks)
    assert n == expected and rule.startswith("auto")


def test_step_flops_counts_the_networks_forward_and_backward():
    torch.manual_seed(0)
    model = vae((20,), 4, hidden=(32,))
    guide = make_guide("normal", model, hidden=(32,))
    x = torch.bernoulli(torch.full((16, 20), 0.5))
    # by hand: the matrix products of one forward (2 FLOP per multiply-add), x3 for forward + backward
    encoder = 16 * (20 * 32 + 32 * 8)
    decoder = 16 * (4 * 32 + 32 * 20)
    by_hand = 3 * 2 * (encoder + decoder)
    state = torch.get_rng_state()
    assert step_flops(model, guide, x) == by_hand
    assert torch.equal(torch.get_rng_state(), state)  # the count draws nothing the fit would have drawn
    assert step_flops(model, guide, x.repeat(2, 1)) == 2 * by_hand


def test_fit_records_its_choice_and_restores_torchs_threads():
    before = torch.get_num_threads()
    torch.manual_seed(0)
    model = vae((6,), 2, hidden=(8,))
    guide = make_guide("normal", model, hidden=(8,))
    x = torch.bernoulli(torch.full((40, 6), 0.3))
    t = Trainer(model, guide, lr=1e-2, batch_size=20, epochs=1, progress=False, threads="auto")
    history = t.fit(x)
    assert history[0]["threads"] == 1 and t.threads_choice["threads"] == 1  # a tiny step: one thread
    assert t.threads_choice["step_flops"] < FLOPS_PER_THREAD
    assert "bound_cpus" not in t.threads_choice and "bound_cpus" not in history[0]  # one process: nothing bound
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
@pytest.mark.parametrize("cpus, ranks, threads, expected", [
    ([0, 1], 2, 1, [[0], [1]]),
    ([0, 1, 2, 3, 4], 2, 2, [[0, 1], [2, 3, 4]]),  # contiguous shares, sizes differing by at most one
    ([4, 6, 9], 3, 1, [[4], [6], [9]]),  # the usable CPUs, not CPU numbers from 0
])  # fmt: skip
def test_ranks_get_disjoint_shares_of_the_usable_cpus(monkeypatch, cpus, ranks, threads, expected):
    bound = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cpus))
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, mask: bound.append(sorted(mask)))
    shares = [bind_rank_cpus(r, ranks, threads) for r in range(ranks)]
    assert [share for share, _ in shares] == expected == bound


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_nothing_is_bound_when_the_ranks_or_threads_do_not_fit(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, mask: calls.append(mask))
    share, why = bind_rank_cpus(0, 3, 1)
    assert share is None and "2 usable CPUs for 3 ranks" in why
    share, why = bind_rank_cpus(0, 2, 2)
    assert share is None and "2 threads per rank would not fit in a share of 1 CPUs" in why
    assert calls == []


def test_bind_cpus_takes_only_true_or_false():
    model = vae((6,), 2, hidden=(8,))
    with pytest.raises(ConfigError, match="bind_cpus must be true or false"):
        Trainer(model, make_guide("normal", model, hidden=(8,)), bind_cpus="yes")


def test_seed_draws_draws_what_torch_manual_seed_draws():
    seed_draws(1234, torch.device("cpu"))
    a = torch.randn(5)
    torch.manual_seed(1234)
    assert torch.equal(a, torch.randn(5))
