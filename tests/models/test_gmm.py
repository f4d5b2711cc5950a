"""The Gaussian mixture against independent truth: scipy densities, scikit-learn's EM fit, known parameters.

* ``log_density`` equals a direct scipy.stats mixture density (diag and full, batched draws);
* a MAP fit (AutoDelta, TraceEnum_ELBO) reaches scikit-learn's ``GaussianMixture`` mean
  log-likelihood within 1%, both started from the same k-means, on separated 2-D clusters and
  on iris (full and diag); its ``infer_discrete`` assignments agree with sklearn's ``predict``;
* NUTS with the ordering constraint covers the true means with its 94% intervals.
"""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from torch.autograd.functional import jacobian

from pyro_gen.errors import ConfigError, DataError, SiteMismatchError
from pyro_gen.infer.gmm_fit import enum_objective, fit_map, fit_nuts, global_guide, kmeans, point_estimate
from pyro_gen.infer.trainer import Trainer
from pyro_gen.models import GaussianMixture, gmm
from pyro_gen.models.gmm import FirstColumnOrderedTransform, OrderedRowsNormal

K, D = 3, 2
CORR = torch.tensor([[[1.0, 0.6], [0.6, 1.0]], [[1.0, -0.4], [-0.4, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
PARAMS = {
    "weights": torch.tensor([0.2, 0.5, 0.3]),
    "locs": torch.tensor([[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]]),
    "scales": torch.tensor([[0.8, 1.2], [0.5, 0.7], [1.0, 0.6]]),
    "corr_chol": torch.linalg.cholesky(CORR),
}


def params_for(covariance):
    return {k: v for k, v in PARAMS.items() if covariance == "full" or k != "corr_chol"}


def covariances(params, covariance) -> np.ndarray:
    """(K, D, D) covariance matrices from the model's parametrization."""
    s = params["scales"].double()
    if covariance == "diag":
        return torch.diag_embed(s**2).numpy()
    tril = s.unsqueeze(-1) * params["corr_chol"].double()
    return (tril @ tril.transpose(-1, -2)).numpy()


def scipy_log_density(x, params, covariance) -> np.ndarray:
    covs = covariances(params, covariance)
    comps = [
        np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
        for w, m, c in zip(params["weights"].double().numpy(), params["locs"].double().numpy(), covs)
    ]
    return np.logaddexp.reduce(np.stack(comps, -1), -1)


def sklearn_fit(x, init, covariance):
    """scikit-learn's EM started from the same initial parameters as our fit."""
    covs = covariances(init, covariance)
    precisions = np.linalg.inv(covs) if covariance == "full" else 1 / np.diagonal(covs, axis1=1, axis2=2)
    sk = SkGaussianMixture(
        len(init["weights"]),
        covariance_type=covariance,
        weights_init=init["weights"].double().numpy(),
        means_init=init["locs"].double().numpy(),
        precisions_init=precisions,
        max_iter=2000,
        tol=1e-8,
    )
    return sk.fit(x.double().numpy())


@pytest.fixture(scope="module")
def clusters():
    """600 points from 3 separated clusters (full covariances), with their true components."""
    torch.manual_seed(0)
    x, labels = gmm(K, D, "full").sample(600, PARAMS, return_assignments=True)
    return x, labels


# -- densities -------------------------------------------------------------------------------
@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_log_density_equals_scipy_mixture(covariance, clusters):
    x = clusters[0][:50]
    model = gmm(K, D, covariance)
    params = params_for(covariance)
    ours = model.log_density(x.double(), {k: v.double() for k, v in params.items()})
    np.testing.assert_allclose(ours.numpy(), scipy_log_density(x.double().numpy(), params, covariance), rtol=1e-10, atol=1e-10)
    # leading batch dims of the parameters (e.g. posterior draws) give one row per draw
    draws = {k: torch.stack([v, v.flip(0)]) for k, v in params.items()}
    batched = model.log_density(x, draws)
    assert batched.shape == (2, 50)
    flipped = {k: v.flip(0) for k, v in params.items()}
    np.testing.assert_allclose(batched[1].numpy(), scipy_log_density(x.double().numpy(), flipped, covariance), rtol=1e-5)


def test_responsibilities_and_infer_discrete_assignments(clusters):
    x = clusters[0]
    model = gmm(K, D, "full")
    resp = model.responsibilities(x, PARAMS)
    comps = np.stack(
        [
            np.log(w) + stats.multivariate_normal(m, c).logpdf(x.numpy())
            for w, m, c in zip(PARAMS["weights"].numpy(), PARAMS["locs"].numpy(), covariances(PARAMS, "full"))
        ],
        -1,
    )
    np.testing.assert_allclose(resp.numpy(), np.exp(comps - np.logaddexp.reduce(comps, -1, keepdims=True)), atol=1e-5)
    # infer_discrete at temperature 0 is the most probable component of each point
    assert torch.equal(model.assignments(x, PARAMS), resp.argmax(-1))
    assert adjusted_rand_score(clusters[1].numpy(), model.assignments(x, PARAMS).numpy()) > 0.95


def test_samples_have_the_mixture_moments():
    torch.manual_seed(1)
    x, a = gmm(K, D, "full").sample(20000, PARAMS, return_assignments=True)
    assert x.shape == (20000, D) and a.shape == (20000,)
    freq = torch.bincount(a, minlength=K) / 20000.0
    assert torch.allclose(freq, PARAMS["weights"], atol=0.015)
    for k in range(K):
        xk = x[a == k].double().numpy()
        np.testing.assert_allclose(xk.mean(0), PARAMS["locs"][k].numpy(), atol=0.06)
        np.testing.assert_allclose(np.cov(xk.T), covariances(PARAMS, "full")[k], atol=0.08)


# -- the ordering constraint -----------------------------------------------------------------------
def test_ordered_prior_sorts_rows_and_has_the_order_statistics_density():
    torch.manual_seed(0)
    prior = OrderedRowsNormal(0.0, 2.0, (4, 3))
    x = prior.sample((500,))
    assert x.shape == (500, 4, 3)
    assert (x[..., 1:, 0] > x[..., :-1, 0]).all() and prior.support.check(x).all()
    iid = torch.distributions.Normal(0.0, 2.0).log_prob(x).sum((-1, -2))
    assert torch.allclose(prior.log_prob(x), iid + math.log(24))
    # the bijection NUTS and the autoguides use: round trip and log|det J| against autograd
    t = torch.distributions.biject_to(prior.support)
    assert isinstance(t, FirstColumnOrderedTransform)
    u = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(t.inv(t(u)), u)
    jac = jacobian(lambda v: t(v.reshape(4, 3)).reshape(-1), u.reshape(-1))
    assert torch.allclose(t.log_abs_det_jacobian(u, t(u)), torch.linalg.slogdet(jac)[1])


def test_ordered_model_samples_ordered_locs():
    import pyro.poutine as poutine

    model = gmm(3, 2, ordered=True)
    locs = poutine.trace(model).get_trace(batch_size=5).nodes["locs"]["value"]
    assert (locs[1:, 0] > locs[:-1, 0]).all()
    init = model.params_from_labels(
        torch.tensor([[5.0, 0], [5.1, 0], [-3, 0], [-3.1, 0], [0, 1], [0.1, 1]]), torch.tensor([0, 0, 1, 1, 2, 2])
    )
    assert (init["locs"][1:, 0] > init["locs"][:-1, 0]).all()


# -- MAP fits against scikit-learn -----------------------------------------------------------------
def relative_gap(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / abs(theirs)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_map_fit_matches_sklearn_on_separated_clusters(covariance, clusters):
    x = clusters[0]
    model = gmm(K, D, covariance)
    labels = torch.as_tensor(KMeans(K, n_init=10, random_state=0).fit(x.numpy()).labels_)
    init = model.params_from_labels(x, labels)
    sk = sklearn_fit(x, init, covariance)
    fit = fit_map(model, x, steps=250, lr=0.05, init=labels)
    ours, theirs = model.log_density(x, fit.params).mean().item(), sk.score(x.double().numpy())
    print(f"synthetic {covariance}: MAP {ours:.5f} sklearn {theirs:.5f} gap {relative_gap(ours, theirs):.2e}")
    assert relative_gap(ours, theirs) < 0.01
    assert adjusted_rand_score(sk.predict(x.double().numpy()), model.assignments(x, fit.params).numpy()) > 0.95
    # our k-means finds the same partition as scikit-learn's on separated clusters
    assert adjusted_rand_score(labels.numpy(), kmeans(x, K).numpy()) > 0.99


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_map_fit_matches_sklearn_on_iris(covariance):
    x = torch.tensor(load_iris().data, dtype=torch.float32)
    model = gmm(3, 4, covariance)
    labels = torch.as_tensor(KMeans(3, n_init=10, random_state=0).fit(x.numpy()).labels_)
    init = model.params_from_labels(x, labels)
    sk = sklearn_fit(x, init, covariance)
    fit = fit_map(model, x, steps=300, lr=0.05, init=labels)
    ours, theirs = model.log_density(x, fit.params).mean().item(), sk.score(x.double().numpy())
    print(f"iris {covariance}: MAP {ours:.5f} sklearn {theirs:.5f} gap {relative_gap(ours, theirs):.2e}")
    assert relative_gap(ours, theirs) < 0.01
    assert adjusted_rand_score(sk.predict(x.double().numpy()), model.assignments(x, fit.params).numpy()) > 0.9


def test_normal_guide_fit_is_near_the_mle(clusters):
    x = clusters[0]
    model = gmm(K, D, "diag")
    fit = fit_map(model, x, guide="normal", steps=300, lr=0.05)
    sk = sklearn_fit(x, model.params_from_labels(x, kmeans(x, K)), "diag")
    assert relative_gap(model.log_density(x, fit.params).mean().item(), sk.score(x.double().numpy())) < 0.01
    assert fit.losses[-1] < fit.losses[0]


# -- the one trainer ----------------------------------------------------------------------------------
def test_enumerated_loss_is_the_exact_negative_log_joint_per_point(clusters):
    # AutoDelta at theta: -ELBO = -(log p(x | theta) + log p(theta)) with the assignments summed out exactly
    x = clusters[0][:100]
    model = gmm(K, D, "full")
    guide = global_guide(model, x, "delta", init=params_for("full"))
    with pyro.settings.context(module_local_params=True):
        loss = enum_objective(model)(model, guide, x, data_size=len(x)).item()
    params = point_estimate(guide, x)
    log_prior = sum(prior.log_prob(params[name]).item() for name, prior in model.global_priors().items())
    assert loss == pytest.approx(-(model.log_density(x, params).sum().item() + log_prior) / len(x), rel=1e-5)


def test_trainer_fits_a_mixture_on_minibatches(clusters):
    # the objective scales the data plate by data_size, so minibatch SGD optimizes the full-data MAP objective
    x = clusters[0]
    model = gmm(K, D, "diag")
    guide = global_guide(model, x, "delta", init="random", seed=1)
    history = Trainer(model, guide, enum_objective(model), lr=0.05, batch_size=150, epochs=60, progress=False).fit(x)
    assert len(history) == 60 and history[-1]["train_loss"] < history[0]["train_loss"]
    sk = sklearn_fit(x, model.params_from_labels(x, kmeans(x, K)), "diag")
    assert relative_gap(model.log_density(x, point_estimate(guide, x)).mean().item(), sk.score(x.double().numpy())) < 0.01


def test_a_guide_must_still_sample_every_site_that_is_not_enumerated(clusters):
    # check_sites lets the enumerated assignment go unguided, not a missing global
    x = clusters[0][:50]
    model = gmm(K, D, "diag")
    with pyro.settings.context(module_local_params=True):
        partial = pyro.infer.autoguide.AutoDelta(pyro.poutine.block(model, expose=["weights", "scales"]))
    with pytest.raises(SiteMismatchError, match=r"the model's latent sites \['locs'\] are not sampled by the guide"):
        Trainer(model, partial, enum_objective(model), epochs=1, progress=False).fit(x)


# -- NUTS ----------------------------------------------------------------------------------------
def test_nuts_with_ordered_means_covers_the_truth():
    torch.manual_seed(0)
    truth = {"weights": torch.tensor([0.4, 0.6]), "locs": torch.tensor([[-2.0], [2.0]]), "scales": torch.tensor([[0.7], [1.0]])}
    model = gmm(2, 1, ordered=True)
    x = model.sample(150, truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the JIT's tracer warnings
        mcmc = fit_nuts(model, x, num_samples=200, warmup=200, seed=0, jit_compile=True, ignore_jit_warnings=True)
    samples = mcmc.get_samples()
    assert set(samples) == {"weights", "locs", "scales"} and samples["locs"].shape == (200, 2, 1)
    assert (samples["locs"][:, 1, 0] > samples["locs"][:, 0, 0]).all()  # no label switching
    for name in ["locs", "scales", "weights"]:
        lo, hi = samples[name].quantile(0.03, 0), samples[name].quantile(0.97, 0)
        assert ((lo < truth[name]) & (truth[name] < hi)).all(), (name, lo, hi, truth[name])
    diag = mcmc.diagnostics()
    r_hat, n_eff = diag["locs"]["r_hat"], diag["locs"]["n_eff"]
    print(
        f"NUTS locs: split R-hat {r_hat.flatten().tolist()}, ESS {n_eff.flatten().tolist()}, divergences {len(diag['divergences']['chain 0'])}"
    )
    assert (r_hat < 1.05).all() and (n_eff > 50).all()


# -- errors --------------------------------------------------------------------------------------
def test_bad_data_is_explained():
    model = gmm(2, 3)
    with pytest.raises(DataError, match=r"2-D data of shape \(N, D\).*got shape \(10,\)"):
        model(torch.randn(10))
    with pytest.raises(DataError, match=r"2-D data.*\(2, 5, 3\)"):
        model.log_density(torch.randn(2, 5, 3), {})
    with pytest.raises(DataError, match="data has 2 coordinates per point but the model was built with dim=3"):
        model(torch.randn(10, 2))
    bad = torch.randn(10, 3)
    bad[2, 1], bad[4, 0] = float("nan"), float("inf")
    with pytest.raises(DataError, match="2 NaN or infinite values"):
        fit_map(model, bad)
    with pytest.raises(DataError, match="more components than points: 5 components for 4 points"):
        fit_map(gmm(5, 3), torch.randn(4, 3))
    with pytest.raises(DataError, match="more components than points"):
        fit_nuts(gmm(5, 3, ordered=True), torch.randn(4, 3))
    with pytest.raises(DataError, match="must be a torch.Tensor"):
        model(np.zeros((4, 3)))


def test_bad_configuration_is_explained():
    with pytest.raises(ConfigError, match="unknown covariance 'spherical'"):
        gmm(2, 2, "spherical")
    with pytest.raises(ConfigError, match="covariance='full' needs dim >= 2"):
        gmm(2, 1, "full")
    with pytest.raises(ConfigError, match="num_components must be a positive integer"):
        gmm(0, 2)
    with pytest.raises(ConfigError, match="loc_scale must be positive"):
        gmm(2, 2, loc_scale=0.0)
    with pytest.raises(ConfigError, match="label switching.*ordered=True"):
        fit_nuts(gmm(2, 2), torch.randn(20, 2))
    with pytest.raises(ConfigError, match=r"params lack the global sites \['corr_chol'\]"):
        gmm(K, D, "full").log_density(torch.randn(5, D), params_for("diag"))
    with pytest.raises(ConfigError, match=r"params\['locs'\] has shape \(2, 2\); expected \(\.\.\., 3, 2\)"):
        gmm(K, D).log_density(torch.randn(5, D), {**params_for("diag"), "locs": torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match="unknown guide 'laplace'"):
        fit_map(gmm(2, 2), torch.randn(20, 2), guide="laplace")
    with pytest.raises(ConfigError, match="unknown init 'pca'"):
        fit_map(gmm(2, 2), torch.randn(20, 2), init="pca")
    assert isinstance(gmm(2, 2), GaussianMixture)
