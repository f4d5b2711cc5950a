"""Run directories: ``train``, ``evaluate``, ``sample``, ``compare`` and ``analyze`` from a :class:`~pyro_gen.config.RunConfig`.

The commands are generic (:mod:`pyro_gen.run.commands`, :mod:`pyro_gen.run.compare`); what differs
between kinds of model is the family's (:mod:`pyro_gen.families`); every file of a run directory
goes through :class:`~pyro_gen.run.rundir.RunDir`.
"""

from pyro_gen.run.rundir import RunDir  # noqa: I001 - first: the families import it
from pyro_gen.run.data import check_device, count_parameters, fixed_test_data, load_splits
from pyro_gen.run.commands import analyze_run, check_config, evaluate_run, sample_run, train, validate
from pyro_gen.run.compare import compare, compare_configs, compare_runs


def load_run(run_dir, device="cpu"):
    """``(config, model, guide, splits)`` of a run directory with its trained weights.

    A GAN run gives its sampler (the moving average of the generator's weights when
    ``objective.ema_decay`` is set) as the model and no guide; :func:`load_gan_run` gives the critic too.
    """
    run = RunDir(run_dir)
    config = run.config()
    model, guide, splits = config.family.load_model(config, run, device)
    return config, model, guide, splits


def __getattr__(name):
    # the GAN helpers that lived here in release 0.1 (notebook 03 imports gan_interpolation from here)
    if name in ("gan_interpolation", "class_grid", "draw_samples"):
        import pyro_gen.analysis

        return getattr(pyro_gen.analysis, name)
    if name in ("build_gan", "load_gan_run"):
        import pyro_gen.families.gan

        return getattr(pyro_gen.families.gan, name)
    if name == "sample_feature_space":
        from pyro_gen.evaluation.gan_scores import sample_feature_space

        return sample_feature_space
    raise AttributeError(f"module 'pyro_gen.run' has no attribute {name!r}")


__all__ = [
    "RunDir",
    "analyze_run",
    "check_config",
    "check_device",
    "compare",
    "compare_configs",
    "compare_runs",
    "count_parameters",
    "evaluate_run",
    "fixed_test_data",
    "load_run",
    "load_splits",
    "sample_run",
    "train",
    "validate",
]
