"""The ArviZ adapter: its arrays are the raw draws (values, shapes, dims, coords), they survive netCDF, errors explain.

Independent truth: the MCMC object's own samples and divergences, scipy log-densities,
the guide's own distributions.
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from torch import nn

from pyro_gen.analysis import from_guide, from_local_posterior, from_mcmc
from pyro_gen.errors import ConfigError, SiteMismatchError
from pyro_gen.guides import make_guide
from pyro_gen.infer.gmm_fit import fit_map, fit_nuts
from pyro_gen.models import Latent, LatentModel, gmm, make_likelihood

arviz = pytest.importorskip("arviz")

TRUTH = {
    "weights": torch.tensor([0.4, 0.6]),
    "locs": torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
    "scales": torch.tensor([[0.7, 1.0], [1.0, 0.5]]),
    "corr_chol": torch.linalg.cholesky(torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[1.0, -0.3], [-0.3, 1.0]]])),
}


@pytest.fixture(scope="module")
def gmm_run():
    """A short NUTS run of a full-covariance mixture (2 components, 2-D, 60 points)."""
    torch.manual_seed(0)
    model = gmm(2, 2, "full", ordered=True)
    x = model.sample(60, TRUTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc = fit_nuts(model, x, num_samples=30, warmup=30, jit_compile=True, ignore_jit_warnings=True)
    pyro.set_rng_seed(1)
    idata = from_mcmc(mcmc, posterior_predictive=True, prior=25)
    return model, x, mcmc, idata


def normal_mean_model(x):
    """mu ~ N(0, 10), x_n ~ N(mu, 1) in the "data" plate: no enumeration, so the adapter replays it."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


@pytest.fixture(scope="module")
def two_chains():
    torch.manual_seed(0)
    x = torch.randn(20) + 3.0
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "chains will be drawn sequentially" on small machines
        mcmc = pyro.infer.MCMC(pyro.infer.NUTS(normal_mean_model), num_samples=40, warmup_steps=40, num_chains=2, disable_progbar=True)
        mcmc.run(x)
    return x, mcmc


# -- from_mcmc -----------------------------------------------------------------------------
def test_posterior_is_the_mcmc_samples_with_named_dims(gmm_run):
    model, x, mcmc, idata = gmm_run
    samples = mcmc.get_samples(group_by_chain=True)
    assert set(idata.posterior.data_vars) == {"weights", "locs", "scales", "corr_chol"}
    for name, value in samples.items():
        np.testing.assert_array_equal(idata.posterior[name].values, value.numpy())
    assert idata.posterior["locs"].dims == ("chain", "draw", "component", "coordinate")
    assert idata.posterior["corr_chol"].dims == ("chain", "draw", "component", "coordinate_row", "coordinate_col")
    assert idata.posterior["weights"].dims == ("chain", "draw", "component")
    for dim, size in {"chain": 1, "draw": 30, "component": 2, "coordinate": 2}.items():
        np.testing.assert_array_equal(idata.posterior[dim].values, np.arange(size))


def test_sample_stats_diverging_matches_the_sampler(gmm_run):
    _, _, mcmc, idata = gmm_run
    diverging = idata.sample_stats["diverging"]
    assert diverging.dims == ("chain", "draw") and diverging.dtype == bool and diverging.shape == (1, 30)
    assert sorted(np.nonzero(diverging.values[0])[0].tolist()) == sorted(mcmc.diagnostics()["divergences"]["chain 0"])


def test_log_likelihood_is_per_datapoint_and_draw(gmm_run):
    model, x, mcmc, idata = gmm_run
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "data") and ll.shape == (1, 30, 60)
    # independent check of one draw with scipy: log sum_k w_k N(x | mu_k, Sigma_k)
    draw = {k: v[0, 7].double() for k, v in mcmc.get_samples(group_by_chain=True).items()}
    tril = draw["scales"].unsqueeze(-1) * draw["corr_chol"]
    covs = (tril @ tril.transpose(-1, -2)).numpy()
    comps = [
        np.log(w) + stats.multivariate_normal(m, c).logpdf(x.double().numpy())
        for w, m, c in zip(draw["weights"].numpy(), draw["locs"].numpy(), covs)
    ]
    np.testing.assert_allclose(ll.values[0, 7], np.logaddexp.reduce(comps, 0), rtol=1e-4)
    # ArviZ's PSIS-LOO reads it as one observation per datapoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = arviz.loo(idata, pointwise=True)
    assert loo["loo_i"].shape == (60,)


def test_observed_and_predictive_groups(gmm_run):
    model, x, _, idata = gmm_run
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
    assert idata.observed_data["x"].dims == ("data", "coordinate")
    pp = idata.posterior_predictive["x"]
    assert pp.dims == ("chain", "draw", "data", "coordinate") and pp.shape == (1, 30, 60, 2)
    assert not np.allclose(pp.values[0, 0], x.numpy())  # replicated, not copied
    assert idata.prior["locs"].shape == (1, 25, 2, 2) and idata.prior_predictive["x"].shape == (1, 25, 60, 2)
    assert set(idata.prior.data_vars) == set(idata.posterior.data_vars)  # the enumerated assignment is not a posterior site
    assert (np.diff(idata.prior["locs"].values[..., 0], axis=-1) > 0).all()  # drawn from the ordered prior


def test_replayed_log_likelihood_and_chains_of_a_model_without_log_density(two_chains):
    x, mcmc = two_chains
    idata = from_mcmc(mcmc)
    mu = mcmc.get_samples(group_by_chain=True)["mu"]
    np.testing.assert_array_equal(idata.posterior["mu"].values, mu.numpy())
    assert idata.posterior["mu"].dims == ("chain", "draw") and idata.posterior["mu"].shape == (2, 40)
    expected = stats.norm(mu.double().numpy()[..., None], 1.0).logpdf(x.double().numpy())
    np.testing.assert_allclose(idata.log_likelihood["x"].values, expected, rtol=1e-5)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")
    assert idata.observed_data["x"].dims == ("data",)
    assert idata.sample_stats["diverging"].shape == (2, 40)


def test_dims_and_coords_can_be_overridden(two_chains):
    x, mcmc = two_chains
    labels = [f"p{i}" for i in range(len(x))]
    idata = from_mcmc(mcmc, dims={"x": ["point"]}, coords={"point": labels})
    assert idata.observed_data["x"].dims == ("point",)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "point")
    assert list(idata.log_likelihood["point"].values) == labels


def test_netcdf_round_trip_is_exact(gmm_run, tmp_path):
    idata = gmm_run[3]
    path = idata.to_netcdf(str(tmp_path / "gmm.nc"))
    back = arviz.from_netcdf(path)
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        before, after = idata[group], back[group]
        assert set(before.data_vars) == set(after.data_vars)
        for name in before.data_vars:
            assert before[name].dims == after[name].dims
            assert before[name].dtype == after[name].dtype
            np.testing.assert_array_equal(before[name].values, after[name].values)
        for dim in before.coords:
            np.testing.assert_array_equal(before[dim].values, after[dim].values)


# -- from_guide ----------------------------------------------------------------------------
def test_from_guide_draws_from_an_svi_guide(gmm_run):
    model, x, _, _ = gmm_run
    fit = fit_map(gmm(2, 2, "full"), x, guide="delta", steps=30)
    idata = from_guide(model, fit.guide, x, num_draws=5)
    # AutoDelta: every draw is the point estimate
    for name, value in fit.params.items():
        assert idata.posterior[name].shape == (1, 5) + tuple(value.shape)
        np.testing.assert_allclose(idata.posterior[name].values, np.broadcast_to(value.numpy(), (1, 5) + tuple(value.shape)), rtol=1e-6)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 0], model.log_density(x, fit.params).numpy(), rtol=1e-5)

    fit = fit_map(gmm(2, 2, "diag"), x, guide="normal", steps=30, init_scale=0.05)
    pyro.set_rng_seed(0)
    idata = from_guide(gmm(2, 2, "diag"), fit.guide, x, num_draws=4000, posterior_predictive=True)
    locs = idata.posterior["locs"]
    assert locs.dims == ("chain", "draw", "component", "coordinate") and locs.shape == (1, 4000, 2, 2)
    # the draws follow the guide: AutoNormal's locs are Normal(loc, scale) with the guide's parameters
    loc, scale = fit.guide.locs.locs.detach().numpy(), fit.guide.scales.locs.detach().numpy()
    np.testing.assert_allclose(locs.values[0].mean(0), loc, atol=5 * scale.max() / math.sqrt(4000))
    np.testing.assert_allclose(locs.values[0].std(0), scale, rtol=0.1)
    np.testing.assert_allclose(idata.posterior["weights"].values.sum(-1), 1.0, rtol=1e-5)
    assert idata.posterior_predictive["x"].shape == (1, 4000, 60, 2)


def test_from_guide_of_a_plain_pyro_svi_guide():
    torch.manual_seed(0)
    x = torch.randn(20) + 3.0
    pyro.clear_param_store()
    guide = pyro.infer.autoguide.AutoNormal(normal_mean_model)  # parameters in the global param store
    svi = pyro.infer.SVI(normal_mean_model, guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    for _ in range(200):
        svi.step(x)
    idata = from_guide(normal_mean_model, guide, x, num_draws=2000)
    assert abs(idata.posterior["mu"].values.mean() - guide.median(x)["mu"].item()) < 0.02
    assert idata.log_likelihood["x"].shape == (1, 2000, 20)
    pyro.clear_param_store()


# -- from_local_posterior --------------------------------------------------------------------
@pytest.fixture(scope="module")
def amortized():
    torch.manual_seed(0)
    model = LatentModel([Latent("z", (3,))], nn.Linear(3, 4), make_likelihood("gaussian", scale=0.5), data_shape=(4,))
    return model, make_guide("normal", model, hidden=(8,)), torch.randn(6, 4)


def test_local_posterior_draws_follow_q_of_each_datapoint(amortized):
    model, guide, x = amortized
    pyro.set_rng_seed(0)
    idata = from_local_posterior(guide, x[2:5], num_draws=4000, datapoints=[2, 3, 4])
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "data", "z_dim_1") and z.shape == (1, 4000, 3, 3)
    np.testing.assert_array_equal(z["data"].values, [2, 3, 4])
    with torch.no_grad():
        (q,) = guide.posterior(x[2:5])
    se = q.stddev.numpy() / math.sqrt(4000)
    assert (np.abs(z.values[0].mean(0) - q.mean.numpy()) < 5 * se).all()
    np.testing.assert_allclose(z.values[0].std(0), q.stddev.numpy(), rtol=0.08)


def test_local_posterior_errors(amortized, gmm_run):
    model, guide, x = amortized
    with pytest.raises(ConfigError, match=r"no local sites \['w'\]; its local sites are \['z'\]"):
        from_local_posterior(guide, x, names=["w"])
    with pytest.raises(ConfigError, match="one label per row of x"):
        from_local_posterior(guide, x, datapoints=[0, 1])
    gx = gmm_run[1]
    fit = fit_map(gmm(2, 2, "full"), gx, steps=2)
    with pytest.raises(ConfigError, match="the guide samples no local latent sites.*use from_guide"):
        from_local_posterior(fit.guide, gx)
    with pytest.raises(ConfigError, match="the guide samples no global latent sites.*from_local_posterior"):
        from_guide(model, guide, x)


# -- errors -----------------------------------------------------------------------------------
def enumerated_mixture(x):
    """A plain Pyro mixture (no log_density method) whose assignments NUTS enumerates."""
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    with pyro.plate("data", len(x)):
        a = pyro.sample("a", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[a], 1.0), obs=x)


def test_enumerated_model_without_log_density_is_explained():
    x = torch.cat([torch.randn(10) - 2, torch.randn(10) + 2])
    mcmc = pyro.infer.MCMC(pyro.infer.NUTS(enumerated_mixture, max_plate_nesting=1), num_samples=5, warmup_steps=5, disable_progbar=True)
    mcmc.run(x)
    with pytest.raises(ConfigError, match=r"latent sites \['a'\] have no draws.*log_density\(x, params\)"):
        from_mcmc(mcmc)
    assert "log_likelihood" not in from_mcmc(mcmc, log_likelihood=False).groups()


def test_mcmc_errors(two_chains):
    x = two_chains[0]
    mcmc = pyro.infer.MCMC(pyro.infer.RandomWalkKernel(normal_mean_model), num_samples=5, warmup_steps=5, disable_progbar=True)
    with pytest.raises(ConfigError, match="no samples; call mcmc.run"):
        from_mcmc(mcmc)
    mcmc.run(x)
    with pytest.raises(ConfigError, match="records no divergences"):
        from_mcmc(mcmc)


def test_guide_with_sites_the_model_lacks_is_refused(two_chains):
    def guide(x):
        pyro.sample("mu", dist.Normal(3.0, 0.1))
        pyro.sample("nu", dist.Normal(0.0, 1.0))

    with pytest.raises(SiteMismatchError, match=r"the guide samples \['nu'\], which are not latent sites of the model"):
        from_guide(normal_mean_model, guide, two_chains[0], num_draws=10)
