"""Flow families: log-det-Jacobians against autograd Jacobians, log q(z) against the change-of-variables formula."""

import pytest
import torch
from pyro.distributions import transforms as T
from torch.autograd.functional import jacobian

from pyro_gen.guides import make_family

FLOW_KINDS = ["planar", "radial", "coupling", "iaf"]
CONTEXT_DIM, DIM, LAYERS, BATCH = 5, 4, 3, 4


def build(kind, num_layers=LAYERS, perturb=0.3):
    """A double-precision flow family whose transform parameters are moved away from the identity."""
    family = make_family(kind, context_dim=CONTEXT_DIM, dim=DIM, num_layers=num_layers).double()
    with torch.no_grad():
        for p in family.transforms.parameters():
            p.add_(perturb * torch.randn_like(p))
    return family


def conditioned_transforms(family, h):
    """The family's transforms conditioned on context ``h``, in the order they are applied."""
    return list(family(h).transforms)


def push(family, h, eps):
    """Push ``eps`` through the conditioned transforms one by one; return z and the summed log-det-Jacobians."""
    x, logdet = eps, torch.zeros(eps.shape[:-1], dtype=eps.dtype)
    for t in conditioned_transforms(family, h):
        y = t(x)
        logdet = logdet + t.log_abs_det_jacobian(x, y)
        x = y
    return x, logdet


def autograd_logdet(family, h, eps):
    """log |det d z / d eps| of the whole map for one datapoint, from the full autograd Jacobian."""
    jac = jacobian(lambda e: push(family, h, e)[0], eps)
    assert jac.shape == (DIM, DIM)
    return torch.linalg.slogdet(jac).logabsdet


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_sum_of_log_det_jacobians_matches_autograd(kind):
    family = build(kind)
    h = torch.randn(BATCH, CONTEXT_DIM, dtype=torch.double)
    for i in range(BATCH):
        eps = family.base(h[i]).sample()
        z, logdet = push(family, h[i], eps)
        expected = autograd_logdet(family, h[i], eps)
        assert torch.allclose(logdet, expected, atol=1e-8), (kind, i, logdet.item(), expected.item())
        # not vacuous: the perturbed flow is far from volume preserving and moves the sample
        assert (z - eps).abs().max() > 1e-2


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_log_prob_of_own_sample_is_change_of_variables(kind):
    family = build(kind)
    h = torch.randn(BATCH, CONTEXT_DIM, dtype=torch.double)
    q = family(h)
    torch.manual_seed(1)
    z = q.rsample()
    assert z.shape == (BATCH, DIM)
    # the same noise again gives the base sample behind z
    torch.manual_seed(1)
    base = family.base(h)
    eps = base.rsample()
    log_q = q.log_prob(z)
    assert log_q.shape == (BATCH,)
    for i in range(BATCH):
        z_i, _ = push(family, h[i], eps[i])
        assert torch.allclose(z_i, z[i], atol=1e-10)
        expected = base.log_prob(eps)[i] - autograd_logdet(family, h[i], eps[i])
        assert torch.allclose(log_q[i], expected, atol=1e-6), (kind, i, log_q[i].item(), expected.item())
    # and the flow's log-density really differs from the base's (a non-trivial flow)
    assert (log_q - base.log_prob(eps)).abs().max() > 1e-2


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_every_layer_changes_its_input(kind):
    family = build(kind)
    h = torch.randn(CONTEXT_DIM, dtype=torch.double)
    x = family.base(h).sample()
    learnable = [t for t in conditioned_transforms(family, h) if not isinstance(t, T.Permute)]
    assert len(learnable) == LAYERS
    for t in learnable:
        y = t(x)
        assert (y - x).abs().max() > 1e-3, f"a {kind} layer acts as the identity"
        x = y


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_perturbed_flow_changes_the_distribution(kind):
    """Same base noise and context: the flow's samples and densities differ from the base Normal's."""
    family = build(kind)
    h = torch.randn(64, CONTEXT_DIM, dtype=torch.double)
    q, base = family(h), family.base(h)
    torch.manual_seed(2)
    z = q.rsample()
    torch.manual_seed(2)
    eps = base.rsample()
    assert (z - eps).abs().mean() > 0.05
    # q scores its own sample (planar / radial have no inverse, only a cache of the forward pass)
    assert (q.log_prob(z) - base.log_prob(z)).abs().mean() > 0.05


@pytest.mark.parametrize("kind", ["coupling", "iaf"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_permutations_between_coupling_and_iaf_layers(kind, num_layers):
    family = make_family(kind, context_dim=CONTEXT_DIM, dim=DIM, num_layers=num_layers)
    transforms = conditioned_transforms(family, torch.randn(CONTEXT_DIM))
    kinds = ["perm" if isinstance(t, T.Permute) else "layer" for t in transforms]
    assert kinds == ["layer", "perm"] * (num_layers - 1) + ["layer"]
    for t in transforms:
        if isinstance(t, T.Permute):
            assert t.permutation.tolist() == list(range(DIM - 1, -1, -1))


def test_coupling_transforms_every_coordinate_thanks_to_the_permutation():
    """A coupling layer leaves its first half untouched; with the reversal in between, two layers touch all."""
    h = torch.randn(CONTEXT_DIM, dtype=torch.double)
    one = build("coupling", num_layers=1)
    eps = one.base(h).sample()
    z1, _ = push(one, h, eps)
    half = DIM // 2
    assert torch.equal(z1[:half], eps[:half])
    assert (z1[half:] - eps[half:]).abs().min() > 1e-4
    two = build("coupling", num_layers=2)
    eps = two.base(h).sample()
    z2, _ = push(two, h, eps)
    # after layer, reverse, layer: the output (in reversed order) moved in every coordinate
    assert (z2.flip(-1) - eps).abs().min() > 1e-4


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_fresh_flow_has_the_requested_trainable_layers(kind):
    family = make_family(kind, context_dim=CONTEXT_DIM, dim=DIM, num_layers=LAYERS)
    assert len(family.transforms) == LAYERS  # the learnable (conditional) transforms
    assert all(sum(p.numel() for p in t.parameters()) > 0 for t in family.transforms)
    conditioned = conditioned_transforms(family, torch.randn(CONTEXT_DIM))
    assert sum(not isinstance(t, T.Permute) for t in conditioned) == LAYERS


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_fresh_flow_starts_at_the_identity(kind):
    """Fresh layers of every flow leave z and log q unchanged (then training moves them).

    For planar this needs the hypernet's bias init: Pyro's invertibility constraint maps u, w ~ 0
    to a layer that contracts z by ~0.69 along w, so a default-initialised planar:10 starts far from its base.
    """
    family = make_family(kind, context_dim=CONTEXT_DIM, dim=DIM, num_layers=LAYERS).double()
    # the hypernets' weights are small, not zero (so datapoints can diverge as training goes): the map is
    # the identity at context 0 (to float32 rounding of the init) and within a few 1e-3 of it elsewhere
    for h, tol in [
        (torch.zeros(BATCH, CONTEXT_DIM, dtype=torch.double), 1e-6),
        (torch.randn(BATCH, CONTEXT_DIM, dtype=torch.double), 0.05),
    ]:
        eps = family.base(h).sample()
        z, logdet = push(family, h, eps)
        # coupling's and IAF's reversals permute coordinates; undo them (LAYERS - 1 reversals)
        if kind in ("coupling", "iaf") and (LAYERS - 1) % 2:
            z = z.flip(-1)
        assert (z - eps).abs().max() < tol, kind
        assert logdet.abs().max() < tol, kind


def test_fresh_planar_layers_point_in_different_directions():
    """The identity init still gives each layer its own direction w (layers are not clones)."""
    family = make_family("planar", context_dim=CONTEXT_DIM, dim=DIM, num_layers=LAYERS)
    ws = torch.stack([t.nn.linear.bias[1 + DIM :] for t in family.transforms])
    assert ws.norm(dim=-1).min() > 0.1
    cos = torch.nn.functional.cosine_similarity(ws[0], ws[1], dim=0)
    assert cos.abs() < 0.999


def test_planar_layer_is_pyros_planar_layer():
    """The library's planar layer (elementwise dot products) is Pyro's (batched matmuls): same map and log-determinant."""
    from pyro.distributions import transforms as T

    from pyro_gen.guides.families import ConditionalPlanar, _planar_hypernet

    torch.manual_seed(0)
    net = _planar_hypernet(CONTEXT_DIM, DIM)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    h, x = torch.randn(3, CONTEXT_DIM), torch.randn(2, 3, DIM)
    ours, pyros = ConditionalPlanar(net).condition(h), T.ConditionalPlanar(net).condition(h)
    y, y_pyro = ours(x), pyros(x)
    torch.testing.assert_close(y, y_pyro, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.log_abs_det_jacobian(x, y), pyros.log_abs_det_jacobian(x, y_pyro), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["coupling", "iaf"])
def test_coupling_and_iaf_layers_are_pyros_layers(kind):
    """The library's conditioned coupling / IAF layers (plain transforms) are Pyro's: same map, log-determinant and inverse."""
    from pyro.distributions import transforms as T
    from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN

    from pyro_gen.guides.families import ConditionalAffineAutoregressive, ConditionalAffineCoupling

    torch.manual_seed(0)
    if kind == "coupling":
        net = ConditionalDenseNN(DIM // 2, CONTEXT_DIM, [8], param_dims=[DIM - DIM // 2] * 2)
        ours, pyros = ConditionalAffineCoupling(DIM // 2, net), T.ConditionalAffineCoupling(DIM // 2, net)
    else:
        net = ConditionalAutoRegressiveNN(DIM, CONTEXT_DIM, [8])
        ours, pyros = ConditionalAffineAutoregressive(net), T.ConditionalAffineAutoregressive(net)
    h, x = torch.randn(3, CONTEXT_DIM), torch.randn(2, 3, DIM)
    a, b = ours.condition(h), pyros.condition(h)
    y, y_pyro = a(x), b(x)
    torch.testing.assert_close(y, y_pyro, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.log_abs_det_jacobian(x, y), b.log_abs_det_jacobian(x, y_pyro), rtol=1e-6, atol=1e-6)
    fresh = y.detach().clone()  # not the cached output: a real inversion
    torch.testing.assert_close(ours.condition(h).inv(fresh), x, rtol=1e-5, atol=1e-5)
