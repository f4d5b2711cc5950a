"""Guides by name: every registered family fits the same model; bad names and mismatched sites are explained."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen.errors import ConfigError, SiteMismatchError
from pyro_gen.evaluation import evaluate
from pyro_gen.guides import AmortizedGuide, guide_names, make_guide, parse_guide_name
from pyro_gen.infer import check_sites, get_traces
from pyro_gen.infer.trainer import Trainer
from pyro_gen.models import vae

GUIDES = ["normal", "planar:2", "radial:2", "coupling:2", "iaf:2"]


def structured_images(n=200):
    """Binary 4x4 images: one of two stripe patterns with 10% of the pixels flipped."""
    protos = torch.tensor([[1, 1, 0, 0] * 4, [1, 0] * 8], dtype=torch.float).reshape(2, 1, 4, 4)
    idx = torch.randint(0, 2, (n,))
    flip = torch.rand(n, 1, 4, 4) < 0.1
    return torch.where(flip, 1 - protos[idx], protos[idx])


def test_guide_names_list_every_family():
    assert guide_names() == ["normal", "planar:K", "radial:K", "coupling:K", "iaf:K"]


@pytest.mark.parametrize("name", GUIDES)
def test_every_guide_trains_on_the_same_model(name):
    x = structured_images()
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    guide = make_guide(name, model, hidden=(16,))
    assert isinstance(guide, AmortizedGuide) and guide.name == name
    before = evaluate(model, guide, x, num_samples=10)
    history = Trainer(model, guide, lr=2e-2, batch_size=50, epochs=5, progress=False).fit(x)
    after = evaluate(model, guide, x, num_samples=10)
    assert len(history) == 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # 16 binary pixels start near 16 log 2 = 11.1 nats; the stripes are easy to learn
    assert before["nll"] > 10.0
    assert after["nll"] < before["nll"] - 2.0
    assert after["elbo"] > before["elbo"] + 2.0


@pytest.mark.parametrize("name", ["planar:3", "radial:1", "coupling:2", "iaf:4"])
def test_flow_guides_have_the_requested_number_of_layers(name):
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    guide = make_guide(name, model, hidden=(16,))
    assert len(guide.families[0].transforms) == int(name.split(":")[1])


def test_parse_guide_name():
    assert parse_guide_name("normal") == ("normal", 0)
    assert parse_guide_name("planar:10") == ("planar", 10)
    assert parse_guide_name(" iaf:3 ") == ("iaf", 3)
    assert parse_guide_name("coupling") == ("coupling", 4)  # the default layer count


def test_unknown_guide_name_lists_known_guides():
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    with pytest.raises(ConfigError) as info:
        make_guide("maf:3", model)
    message = str(info.value)
    assert "'maf:3'" in message
    for known in ["normal", "planar:K", "radial:K", "coupling:K", "iaf:K"]:
        assert known in message


@pytest.mark.parametrize("name", ["planar:x", "planar:0", "planar:-2", "radial:1.5"])
def test_bad_layer_count_is_explained(name):
    with pytest.raises(ConfigError, match="positive integer") as info:
        parse_guide_name(name)
    assert repr(name) in str(info.value)


def test_normal_takes_no_layer_count():
    with pytest.raises(ConfigError, match="takes no layer count") as info:
        parse_guide_name("normal:3")
    assert "'normal:3'" in str(info.value)


def test_custom_encoder_needs_context_dim():
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    with pytest.raises(ConfigError, match="context_dim"):
        make_guide("normal", model, encoder=nn.Linear(16, 8))
    guide = make_guide("normal", model, encoder=nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), context_dim=8)
    (q,) = guide.posterior(torch.zeros(3, 1, 4, 4))
    assert q.batch_shape == (3,) and q.event_shape == (2,)


class WrongSiteGuide(nn.Module):
    """Samples the right shape under the wrong name: 'w' instead of the model's 'z'."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))

    def forward(self, x, batch_size=None, data_size=None):
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("w", dist.Normal(self.loc, 1.0).to_event(1))


def test_wrong_site_name_is_explained_by_check_sites():
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    x = structured_images(8)
    model_trace, guide_trace = get_traces(model, WrongSiteGuide(), x)
    with pytest.raises(SiteMismatchError) as info:
        check_sites(model_trace, guide_trace)
    assert "'z'" in str(info.value) and "'w'" in str(info.value)


def test_wrong_site_name_is_explained_by_the_trainer():
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    with pytest.raises(SiteMismatchError) as info:
        Trainer(model, WrongSiteGuide(), epochs=1, progress=False).fit(structured_images(8))
    assert "'z'" in str(info.value) and "'w'" in str(info.value)


def test_check_sites_accepts_the_registered_guides():
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    x = structured_images(8)
    for name in GUIDES:
        check_sites(*get_traces(model, make_guide(name, model, hidden=(16,)), x, num_particles=3))


# -- names that used to hang or crash ---------------------------------------------------------------
@pytest.mark.parametrize(
    "name, match",
    [
        ("planar:99999999999999999999", "at most 1000 flow layers"),  # used to build layers for ever
        ("iaf:1001", "at most 1000 flow layers"),
        ("planar:0", "positive integer"),
        ("iaf:x", "positive integer"),
        ("iaf:-1", "positive integer"),
        ("iaf:", "positive integer"),
        ("iaf:²", "positive integer"),  # str.isdigit() is True, int() refuses it
        ("iaf: 3", "positive integer"),
        ("normal:3", "takes no layer count"),
        ("normal:", "takes no layer count"),
        ("", "empty guide name"),
        ("   ", "empty guide name"),
        (":3", "empty guide name"),
        ("maf:3", "unknown guide"),
    ],
)
def test_bad_guide_names_raise_a_one_line_config_error(name, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_guide_name(name)
    assert "\n" not in str(info.value) and repr(name) in str(info.value)


@pytest.mark.parametrize("name", [None, 3, 3.5, ["planar", 3], b"planar:3"])
def test_a_guide_name_that_is_not_a_string_is_refused(name):
    with pytest.raises(ConfigError, match="must be a string") as info:
        parse_guide_name(name)
    assert "\n" not in str(info.value)


def test_the_largest_layer_count_is_accepted():
    assert parse_guide_name("planar:1000") == ("planar", 1000)
    assert parse_guide_name("iaf:007") == ("iaf", 7)


@pytest.mark.parametrize("model", [None, nn.Linear(2, 2), "vae"])
def test_make_guide_refuses_a_model_that_is_not_a_latent_model(model):
    with pytest.raises(ConfigError, match="needs a pyro_gen LatentModel") as info:
        make_guide("normal", model)
    assert "\n" not in str(info.value)


def test_a_huge_layer_count_fails_fast_in_make_guide():
    model = vae((1, 4, 4), latent_dim=2, hidden=(16,))
    with pytest.raises(ConfigError, match="at most 1000"):
        make_guide("planar:99999999999999999999", model, hidden=(16,))
