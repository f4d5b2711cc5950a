"""Data for a run: the configured splits, test data fixed once, parameter counts. Shared by every family."""

from __future__ import annotations

import torch

from pyro_gen.errors import ConfigError


def load_splits(cfg, wanted=("train", "valid", "test")) -> dict:
    """Train / valid / test :class:`~pyro_gen.data.ArrayData` for a :class:`~pyro_gen.config.DataConfig` (seeded subsets).

    ``wanted``: the splits to load (a GAN, selected by no validation score, skips ``valid``).
    """
    from pyro_gen.data import dataset_splits, load_dataset

    splits = {}
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    available = dataset_splits(cfg.name)
    for split in wanted:
        if split not in available:
            if sizes[split] is not None:
                raise ConfigError(
                    f"data.{split}_size is set but {cfg.name!r} has no {split} split (its splits: {', '.join(available)}); remove data.{split}_size"
                )
            continue
        splits[split] = load_dataset(cfg.name, split, data_dir=cfg.data_dir, binarize=cfg.binarize, n=sizes[split], seed=cfg.seed)
    return splits


def image_levels(config) -> int | None:
    """The intensity levels of the configured data's quantized images (2 when binary or binarized): what a PixelCNN's
    softmax, a flow's dequantization and a PixelCNN likelihood read; ``None`` for vectors and continuous-valued images."""
    from pyro_gen.data import dataset_info

    info = dataset_info(config.data.name, config.data.binarize)
    return info.levels if info.image else None


def fixed_test_data(test, seed: int, x: torch.Tensor | None = None) -> torch.Tensor:
    """The test tensor (or images ``x`` of the same dataset); dynamically binarized data are binarized once, with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return test.transform_batch(test.x if x is None else x, generator=g)


def count_parameters(*modules) -> int:
    seen = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(seen.values())


def check_device(device: str, flag: str = "--device") -> None:
    """Refuse a device torch cannot use, in the words of the command line (``--device`` / ``train.device``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{flag} {device!r} is not a device; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} {device}: torch sees no CUDA device on this machine; use {flag} cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag} {device!r}: pyro_gen runs on cpu or cuda; use {flag} cpu")
