"""Feature spaces by name: :func:`feature_space`, the one entry point the scores use, and :func:`extract_features`."""

from __future__ import annotations

import torch

from pyro_gen.errors import DataError
from pyro_gen.evaluation.features.cache import domain_features
from pyro_gen.evaluation.features.domain import DOMAIN_ALIASES, DOMAIN_PROTOCOLS, domain_name
from pyro_gen.evaluation.features.inception import inception_features
from pyro_gen.evaluation.features.space import FeatureSpace, identity_space

# -- the entry point ----------------------------------------------------------------------------------
FEATURE_SPACES = ("identity", "inception", *DOMAIN_PROTOCOLS)


def feature_space(name: str = "identity", data_dir=None, cache_dir=None, device="cpu", progress: bool = True, **options) -> FeatureSpace:
    """The feature space ``name``, the one entry point the sample-quality scores use.

    :param name: ``"identity"`` (raw coordinates), ``"inception"`` (see :func:`inception_features`),
        ``"mnist28"`` / ``"digits8"`` (see :func:`domain_features`; the dataset names ``"mnist"``,
        ``"binarized_mnist"``, ``"digits"`` select these too). A :attr:`FeatureSpace.name` such as
        ``"domain:mnist28"`` or ``"inception:pool3"`` is accepted as well.
    :param data_dir: data directory (domain extractors' training images).
    :param cache_dir: cache directory of the domain extractors.
    :param device: device to compute on.
    :param progress: a domain extractor trained on first use says so on stderr and shows its epochs
        (see :func:`domain_features`); ``False``: silent.
    :param options: passed on: ``rebuild``/``download`` to :func:`domain_features`,
        ``weights_path`` to :func:`inception_features`.
    """
    if not isinstance(name, str):
        raise DataError(f"a feature space is named by a string, got {type(name).__name__}")
    if name == "identity":
        return identity_space()
    if name in ("inception", "inception:pool3"):
        return inception_features(device=device, **options)
    try:
        domain = domain_name(name)
    except DataError:
        raise DataError(
            f"unknown feature space {name!r}; choose one of {', '.join(FEATURE_SPACES)} (or the dataset names {', '.join(DOMAIN_ALIASES)})"
        ) from None
    return domain_features(domain, data_dir=data_dir, cache_dir=cache_dir, device=device, progress=progress, **options)


def resolve_feature_space(space: FeatureSpace | str | None, **space_options) -> FeatureSpace:
    """``space`` itself if it is a :class:`FeatureSpace`, :func:`feature_space` of it if a name, the identity if ``None``."""
    if space is None:
        return identity_space()
    if isinstance(space, FeatureSpace):
        return space
    return feature_space(space, **space_options)


def _space_device(space: FeatureSpace) -> tuple[torch.device, torch.dtype | None]:
    for p in space.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), None


def extract_features(x, space: FeatureSpace | str = "identity", batch_size: int = 256, **space_options) -> torch.Tensor:
    """Embed samples in a feature space, in batches and without gradients.

    :param x: samples, a tensor or array: images ``(N, C, H, W)`` (or flat / ``(N, H, W)``, see
        :class:`FeatureSpace`) with values in ``[0, 1]``, or points ``(N, d)`` for ``"identity"``.
    :param space: a :class:`FeatureSpace`, or a name for :func:`feature_space`.
    :param batch_size: samples embedded at once.
    :param space_options: passed to :func:`feature_space` when ``space`` is a name
        (``data_dir``, ``cache_dir``, ``device``).
    :returns: ``(N, feature_dim)`` float64 features on the CPU.
    """
    space = resolve_feature_space(space, **space_options)
    x = torch.as_tensor(x).detach()
    if len(x) == 0:
        raise DataError("no samples to embed")
    device, dtype = _space_device(space)
    if dtype is not None:
        # a network computes in its own precision; the identity keeps float64 toy points exact
        x = x.to(dtype)
    elif not x.is_floating_point():
        x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise DataError(f"the samples contain {int((~torch.isfinite(x)).sum())} NaN or infinite values")
    with torch.no_grad():
        chunks = [space(x[i : i + batch_size].to(device)).to("cpu", torch.float64) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks)
