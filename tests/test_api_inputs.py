"""Bad inputs x public functions: every case raises a one-line pyro_gen error, never a raw torch / numpy one or a NaN.

Each public function that takes data checks it at its entry (type, shape, dtype, device, emptiness,
NaN / inf, labels) with :func:`pyro_gen.models.checks.check_data_tensor`. The table below crosses
the bad inputs with the functions; a case appears where the input is wrong *for that function*
(the feature-set scores and ``psis_khat`` document numpy arrays and lists of floats as valid input,
and compute in float64, so there a numpy array of integers and a ragged list are the bad
non-tensors, and float64 is not a bad input). The "meta" device stands for "another device than
the model's" on a CPU-only machine: it holds no values, like data left on an absent GPU.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyro_gen.analysis.psis import guide_khat, psis_khat
from pyro_gen.errors import PyroGenError
from pyro_gen.evaluation.likelihood import evaluate, log_likelihood, log_weights
from pyro_gen.evaluation.sample_quality import frechet_distance, kid, precision_recall, quality_scores, toy_mode_coverage
from pyro_gen.guides import make_guide
from pyro_gen.infer.trainer import TensorBatches, _as_batches
from pyro_gen.models import vae
from pyro_gen.models.gmm import gmm

SHAPE = (1, 4, 4)
_models = {}


def model_and_guide():
    if not _models:
        torch.manual_seed(0)
        model = vae(SHAPE, latent_dim=2, hidden=(8,))
        _models["pair"] = model, make_guide("normal", model, hidden=(8,))
    return _models["pair"]


def images(n=6):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=torch.Generator().manual_seed(1))


def points(n=40, d=2, shift=0.0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(int(n + d + 10 * shift))) + shift


GMM = gmm(2, 2)
GMM_PARAMS = {"weights": torch.tensor([0.5, 0.5]), "locs": torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), "scales": torch.ones(2, 2)}


def _scalar(out) -> float:
    """A number summarizing a function's output, to check that a valid input gives no NaN."""
    if isinstance(out, float):
        return out
    if isinstance(out, list):
        return sum(_scalar(o) for o in out)
    if isinstance(out, dict):
        return sum(v for v in out.values() if isinstance(v, float))
    if isinstance(out, tuple):
        return sum(out)
    if torch.is_tensor(out):
        return out[torch.isfinite(out) | out.isnan()].double().sum().item()  # -inf/inf k-hat are defined values
    if hasattr(out, "khat"):
        return _scalar(out.khat)
    if hasattr(out, "as_dict"):
        return _scalar({k: v for k, v in out.as_dict().items() if k != "reverse_kl" or not math.isnan(v)})
    if hasattr(out, "log_px"):
        return out.log_px.sum().item()
    return float(len(list(out)))


# -- the functions: (call with the argument under test, a valid value of it, its kind) ------------------
def _model_call(fn, **kw):
    def call(x):
        model, guide = model_and_guide()
        return fn(model, guide, x, **kw)

    return call


FUNCTIONS = {
    "LatentModel.forward": (lambda x: model_and_guide()[0](x), images, "model"),
    "AmortizedGuide.forward": (lambda x: model_and_guide()[1](x), images, "model"),
    "AmortizedGuide.posterior": (lambda x: [q.mean for q in model_and_guide()[1].posterior(x)], images, "model"),
    "log_likelihood": (_model_call(log_likelihood, num_samples=3), images, "model"),
    "evaluate": (_model_call(evaluate, num_samples=3), images, "model"),
    "log_weights": (_model_call(log_weights, num_samples=3), images, "model"),
    "guide_khat": (_model_call(guide_khat, num_samples=25), images, "model"),
    "GaussianMixture.log_density": (lambda x: GMM.log_density(x, GMM_PARAMS), points, "model"),
    "TensorBatches": (lambda x: list(TensorBatches(x, 4)), images, "batches"),
    "_as_batches": (lambda x: list(_as_batches(x, 4, True, 0)), images, "batches"),
    "psis_khat": (psis_khat, lambda: torch.randn(50, 4, generator=torch.Generator().manual_seed(2)), "array"),
    "frechet_distance": (lambda x: frechet_distance(x, points(shift=1.0)), points, "array"),
    "kid": (lambda x: kid(x, points(shift=1.0)), points, "array"),
    "precision_recall": (lambda x: precision_recall(x, points(shift=1.0)), points, "array"),
    "toy_mode_coverage": (lambda x: toy_mode_coverage(x, "ring8"), points, "array"),
    "quality_scores": (lambda x: quality_scores(points(shift=1.0), x), points, "array"),
}


def with_value(x, value):
    x = x.clone()
    x.view(-1)[1] = value
    return x


# bad inputs: name -> (transform of the valid input, the kinds of function it is bad for)
BAD = {
    "nan": (lambda x: with_value(x, math.nan), ("model", "array")),
    "inf": (lambda x: with_value(x, math.inf), ("model", "array")),
    "float64": (lambda x: x.double(), ("model",)),
    "int64": (lambda x: x.long(), ("model", "batches", "array")),
    "bool": (lambda x: x > 0, ("model", "batches", "array")),
    "numpy_array": (lambda x: x.numpy(), ("model", "batches")),
    "numpy_int_array": (lambda x: x.long().numpy(), ("array",)),
    "list": (lambda x: x.tolist(), ("model", "batches")),
    "ragged_list": (lambda x: [[0.0, 1.0], [2.0]], ("array",)),
    "empty": (lambda x: x[:0], ("model", "batches", "array")),
    "meta_device": (lambda x: x.to("meta"), ("model", "batches", "array")),
    "wrong_shape": (lambda x: torch.cat([x, x], -1), ("model",)),
    "wrong_rank": (lambda x: x[0], ("model", "array")),
    "one_datapoint_no_batch_dim": (lambda x: x[0].reshape(-1)[:0].new_zeros(()), ("batches",)),
}
# a 1-D array is one column of log-weights, valid for psis_khat: its wrong ranks are 0 and 3
NOT_BAD = {("psis_khat", "wrong_rank")}
# a guide runs the model's cheap per-batch checks only: the values (NaN / inf) are the model's to scan,
# once per dataset in the trainer (docs/architecture.md, "Speed decisions"), so a guide called alone
# with NaN data returns NaN
NOT_BAD |= {(g, bad) for g in ("AmortizedGuide.forward", "AmortizedGuide.posterior") for bad in ("nan", "inf")}
# bad inputs for one function only
EXTRA = {
    ("psis_khat", "scalar"): lambda: torch.tensor(1.0),
    ("psis_khat", "three_dims"): lambda: torch.zeros(10, 2, 2),
    ("psis_khat", "one_draw"): lambda: torch.zeros(1, 3),
    ("psis_khat", "no_columns"): lambda: torch.zeros(50, 0),
    ("frechet_distance", "other_dimension"): lambda: points(d=3),
    ("kid", "other_dimension"): lambda: points(d=3),
    ("precision_recall", "other_dimension"): lambda: points(d=3),
    ("toy_mode_coverage", "three_coordinates"): lambda: points(d=3),
    ("quality_scores", "other_dimension"): lambda: points(d=3),
    ("GaussianMixture.log_density", "float64_vs_float32_params"): lambda: points().double(),
}

CASES = [
    pytest.param(fn, bad, id=f"{fn}-{bad}")
    for fn, (_, _, kind) in FUNCTIONS.items()
    for bad, (_, kinds) in BAD.items()
    if kind in kinds and (fn, bad) not in NOT_BAD
] + [pytest.param(fn, bad, id=f"{fn}-{bad}") for fn, bad in EXTRA]


# labels: TensorBatches(x, y=...) and a dataset with .x/.y through _as_batches(labels=True)
def _labelled(y):
    return lambda: list(TensorBatches(images(), 4, y=y))


def _dataset(y):
    return lambda: list(_as_batches(SimpleNamespace(x=images(), y=y), 4, True, 0, labels=True))


LABEL_CASES = {
    "TensorBatches-too_few_labels": _labelled(torch.zeros(5, dtype=torch.long)),
    "TensorBatches-too_many_labels": _labelled(torch.zeros(7, dtype=torch.long)),
    "TensorBatches-float_labels": _labelled(torch.zeros(6)),
    "TensorBatches-2d_labels": _labelled(torch.zeros(6, 1, dtype=torch.long)),
    "TensorBatches-list_labels": _labelled([0] * 6),
    "_as_batches-too_few_labels": _dataset(torch.zeros(5, dtype=torch.long)),
    "_as_batches-float_labels": _dataset(torch.zeros(6)),
    "_as_batches-list_of_numbers": lambda: _as_batches([0.0, 1.0, 2.0], 4, True, 0),
    "_as_batches-empty_list": lambda: _as_batches([], 4, True, 0),
    "TensorBatches-batch_size_0": lambda: TensorBatches(images(), 0),
    "TensorBatches-batch_size_float": lambda: TensorBatches(images(), 2.5),
    "log_likelihood-num_samples_0": lambda: log_likelihood(*model_and_guide(), images(), num_samples=0),
    "psis_khat-r_eff_string": lambda: psis_khat(torch.randn(50, 2), r_eff="1"),
    "toy_mode_coverage-unknown_toy": lambda: toy_mode_coverage(points(), "ring9"),
    "toy_mode_coverage-name_not_a_string": lambda: toy_mode_coverage(points(), ["ring8"]),
}


def assert_one_line_pyro_gen_error(call):
    with pytest.raises(PyroGenError) as info:  # any other exception fails the test
        out = call()
        pytest.fail(f"no error; returned {out!r}")
    message = str(info.value)
    assert message and "\n" not in message, message


@pytest.mark.parametrize("fn, bad", CASES)
def test_bad_input_raises_a_one_line_pyro_gen_error(fn, bad):
    call, valid, _ = FUNCTIONS[fn]
    x = EXTRA[(fn, bad)]() if (fn, bad) in EXTRA else BAD[bad][0](valid())
    assert_one_line_pyro_gen_error(lambda: call(x))


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_bad_labels_and_arguments_raise_a_one_line_pyro_gen_error(case):
    assert_one_line_pyro_gen_error(LABEL_CASES[case])


@pytest.mark.parametrize("fn", list(FUNCTIONS))
def test_valid_input_gives_a_number_not_nan(fn):
    call, valid, _ = FUNCTIONS[fn]
    assert not math.isnan(_scalar(call(valid())))


@pytest.mark.parametrize("fn", [f for f, (_, _, kind) in FUNCTIONS.items() if kind == "array"])
def test_documented_array_inputs_stay_valid(fn):
    # the feature-set scores and psis_khat take numpy arrays, lists of floats and float64 as documented
    call, valid, _ = FUNCTIONS[fn]
    x = valid()
    for same in (x.numpy(), x.double(), x.tolist()):
        assert not math.isnan(_scalar(call(same)))


def test_the_table_is_large():
    assert len(CASES) + len(LABEL_CASES) >= 60


def test_an_error_names_the_fix():
    model, guide = model_and_guide()
    with pytest.raises(PyroGenError, match=r"x\.float\(\)"):
        evaluate(model, guide, torch.from_numpy(np.zeros((3, *SHAPE))))  # float64 straight from numpy
    with pytest.raises(PyroGenError, match=r"torch\.from_numpy"):
        evaluate(model, guide, np.zeros((3, *SHAPE), dtype=np.float32))
    with pytest.raises(PyroGenError, match=r"unsqueeze\(0\)"):
        model(images()[0])
    with pytest.raises(PyroGenError, match="meta"):
        model(images().to("meta"))
