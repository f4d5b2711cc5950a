"""The gradient reducers on 2 gloo ranks against the formula ``sum_r n_r g_r / sum_r n_r``, with a parameter unused
on one rank, one unused on both and uneven counts: the overlapped buckets (``distributed.GradientBuckets``, many
small buckets) and the shared-memory reducer that ranks on one machine use (``distributed.gradient_reducer``)."""

import os
import socket
import time
import types
from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow


def distributed_spins() -> bool:
    from pyro_gen.distributed import _stores_in_order

    return _stores_in_order()


def _net():
    torch.manual_seed(0)
    return nn.ModuleDict({"a": nn.Linear(3, 5), "b": nn.Linear(5, 2), "unused_on_rank_1": nn.Linear(3, 2), "never": nn.Linear(2, 2)})


def _loss(net, x, rank):
    h = torch.tanh(net["a"](x))
    loss = net["b"](h).pow(2).mean()
    if rank == 0:
        loss = loss + net["unused_on_rank_1"](x).sum() / len(x)
    return loss


def _data(rank):
    g = torch.Generator().manual_seed(rank)
    return torch.randn(4 if rank == 0 else 7, 3, generator=g)  # uneven counts: n_0 = 4, n_1 = 7


def _rank_main(rank, world, port, tmp, kind):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from pyro_gen import distributed

    distributed.setup("cpu")
    net = _net()
    if kind == "sharded":
        _sharded_steps(rank, net, tmp)
        distributed.shutdown()
        return
    if kind == "no_room_for_state":  # /dev/shm holds the exchange but not Adam's shared state: the replicated mode
        params = list(net.parameters())
        layout = distributed.shared_memory_layout(len(params), sum(p.numel() for p in params), 2, torch.float32)
        state = 3 * sum(p.numel() for p in params) * 4 + len(params) * 4  # weights, two moments, step counts
        free = layout["nbytes"] + state // 2  # what /dev/shm is made to report
        distributed.SHM_SHARE = 1.0
        distributed.os.statvfs = lambda path: types.SimpleNamespace(f_bavail=free, f_frsize=1)
        optimizer = torch.optim.Adam(params, lr=0.1)
        reducer = distributed.gradient_reducer(params, optimizer)
        result = {"kind": type(reducer).__name__, "shared": reducer.share(optimizer)}
        if rank == 0:
            torch.save(result, Path(tmp) / "no_room.pt")
        reducer.remove()
        distributed.shutdown()
        return
    if kind == "dead_rank":
        reducer = distributed.gradient_reducer(list(net.parameters()))
        if rank == 1:  # dies without a word: no exception, no closing handshake
            os._exit(0)
        x = _data(0)
        loss = _loss(net, x, 0)
        reducer.arm(len(x))
        loss.backward()
        start = time.monotonic()
        try:
            reducer.finish(loss, stop=False)  # the timeout is 1800 s
        except RuntimeError as e:
            (Path(tmp) / "error.txt").write_text(f"{time.monotonic() - start:.3f}\n{e}")
        distributed.shutdown(handshake=False)
        return
    if kind == "late_rank":
        reducer = distributed.gradient_reducer(list(net.parameters()))
        reducer.timeout_s = 1.0
        if rank == 0:  # rank 1 never arrives: rank 0 names it instead of waiting forever
            x = _data(0)
            loss = _loss(net, x, 0)
            reducer.arm(len(x))
            loss.backward()
            try:
                reducer.finish(loss, stop=False)
            except RuntimeError as e:
                (Path(tmp) / "error.txt").write_text(str(e))
        distributed.shutdown()
        return
    if kind == "buckets":
        buckets = distributed.GradientBuckets(list(net.parameters()), bucket_bytes=32)  # a bucket every parameter or two
    else:
        buckets = distributed.gradient_reducer(list(net.parameters()))
        assert isinstance(buckets, distributed.SharedMemoryGradients)
    x = _data(rank)
    loss = _loss(net, x, rank)
    buckets.arm(len(x))
    loss.backward()
    mean_loss, total, stop = buckets.finish(loss, stop=rank == 1)
    if rank == 0:
        grads = {name: None if p.grad is None else p.grad.clone() for name, p in net.named_parameters()}
        torch.save({"grads": grads, "loss": mean_loss, "total": total, "stop": stop}, Path(tmp) / "out.pt")
    if kind == "shared_memory":  # a second step on the other row set, with the roles of the counts swapped
        net.zero_grad(set_to_none=True)
        x = _data(1 - rank)
        loss = _loss(net, x, rank)
        buckets.arm(len(x))
        loss.backward()
        second = buckets.finish(loss, stop=False)
        if rank == 0:
            torch.save({"loss": second[0], "total": second[1]}, Path(tmp) / "second.pt")
    buckets.remove()
    distributed.shutdown()


def _sharded_steps(rank, net, tmp):
    """Two Adam steps with the parameters and Adam's state shared, each rank stepping its share of them."""
    from pyro_gen import distributed

    params = list(net.parameters())
    optimizer = torch.optim.Adam(params, lr=0.1)
    reducer = distributed.gradient_reducer(params, optimizer)
    assert reducer.share(optimizer) and sum(reducer.owned) not in (0, len(params))  # both ranks own some
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        x = _data(rank if step == 0 else 1 - rank)
        loss = _loss(net, x, rank)
        reducer.arm(len(x))
        loss.backward()
        reducer.finish(loss, stop=False)
        reducer.step(optimizer)
    shared = {name: p.detach().clone() for name, p in net.named_parameters()}
    reducer.remove()  # the parameters and state go back to private copies
    if rank == 0:
        torch.save({"params": shared, "optimizer": optimizer.state_dict()}, Path(tmp) / "sharded.pt")
    with torch.no_grad():  # private now: rank 1's change does not reach rank 0
        for p in params:
            p.add_(float(rank))
    distributed.all_reduce_(torch.zeros(1))
    if rank == 0:
        assert all(torch.equal(p, shared[name]) for name, p in net.named_parameters())


def test_sharded_adam_steps_equal_one_process(tmp_path):
    """Each rank averaging and stepping only its share of the shared parameters gives one process's Adam steps on the
    datapoint-weighted mean gradient, with the state of every moved parameter (and none for the unused one)."""
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), "sharded"), nprocs=2, join=True)
    got = torch.load(tmp_path / "sharded.pt", weights_only=False)
    net = _net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    for step in range(2):
        total, grads = 0, {}
        for rank in (0, 1):
            x = _data(rank if step == 0 else 1 - rank)
            net.zero_grad(set_to_none=True)
            _loss(net, x, rank).backward()
            for name, p in net.named_parameters():
                if p.grad is not None:
                    grads[name] = grads.get(name, 0) + p.grad * len(x)
            total += len(x)
        for name, p in net.named_parameters():
            p.grad = grads[name] / total if name in grads else None
        optimizer.step()
    for name, p in net.named_parameters():
        torch.testing.assert_close(got["params"][name], p.detach(), rtol=1e-6, atol=1e-7)
    want, have = optimizer.state_dict()["state"], got["optimizer"]["state"]
    assert sorted(have) == sorted(want)  # the never-used parameter has no state, as in one process
    for i in want:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(have[i][key], want[i][key], rtol=1e-6, atol=1e-7)
    assert not list(Path("/dev/shm").glob("pyro_gen_grads_*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["buckets", "shared_memory"])
def test_reducers_give_the_datapoint_weighted_mean_gradient(tmp_path, kind):
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), kind), nprocs=2, join=True)
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    # the truth, by hand: each rank's gradient weighted by its count
    expected, losses = {}, []
    for rank in (0, 1):
        net, x = _net(), _data(rank)
        loss = _loss(net, x, rank)
        loss.backward()
        losses.append(loss.item() * len(x))
        for name, p in net.named_parameters():
            if p.grad is not None:
                expected[name] = expected.get(name, 0) + p.grad * len(x)
    assert got["total"] == 11 and got["stop"] is True
    assert got["loss"] == pytest.approx(sum(losses) / 11, rel=1e-6)
    for name, g in got["grads"].items():
        if name.startswith("never"):
            assert g is None  # no rank had a gradient: left without one, as in one process
        else:
            torch.testing.assert_close(g, expected[name] / 11, rtol=1e-6, atol=1e-7)
    if kind == "shared_memory":
        second = torch.load(tmp_path / "second.pt", weights_only=False)
        assert second["total"] == 11
        by_hand = sum(_loss(_net(), _data(1 - r), r).item() * len(_data(1 - r)) for r in (0, 1)) / 11
        assert second["loss"] == pytest.approx(by_hand, rel=1e-6)  # the weights did not move: no optimizer step
    assert not list(Path("/dev/shm").glob("pyro_gen_grads_*"))  # the shared file is gone


@pytest.mark.skipif(not distributed_spins(), reason="the counters are read by spinning only on x86 (elsewhere: gloo's timeout)")
def test_a_rank_that_never_arrives_is_named_after_the_timeout(tmp_path):
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), "late_rank"), nprocs=2, join=True)
    message = (tmp_path / "error.txt").read_text()
    assert message.startswith("rank(s) [1] did not reach") and "a rank died or hangs" in message


def test_without_room_for_the_optimizer_state_the_exchange_stays_in_shared_memory(tmp_path):
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), "no_room_for_state"), nprocs=2, join=True)
    assert torch.load(tmp_path / "no_room.pt") == {"kind": "SharedMemoryGradients", "shared": False}
    assert not list(Path("/dev/shm").glob("pyro_gen_grads_*"))


@pytest.mark.skipif(not distributed_spins(), reason="the counters are read by spinning only on x86 (elsewhere: gloo's own errors)")
def test_a_rank_that_dies_is_named_at_once(tmp_path):
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), "dead_rank"), nprocs=2, join=True)
    seconds, message = (tmp_path / "error.txt").read_text().split("\n", 1)
    assert message.startswith("rank 1 (process ") and "exited during the shared-memory gradient exchange" in message
    assert float(seconds) < 30  # not the 1800 s timeout
