"""Objectives over traces (likelihood-based and adversarial) and the one trainer."""

from pyro_gen.infer.adversarial import Adversarial
from pyro_gen.infer.objectives import ELBO, IWAE, Player, PyroELBO, TraceObjective, as_objective, make_objective, objective_names
from pyro_gen.infer.traces import TraceTerms, check_sites, get_traces, trace_terms

__all__ = [
    "Adversarial",
    "ELBO",
    "IWAE",
    "Player",
    "PyroELBO",
    "TraceObjective",
    "TraceTerms",
    "as_objective",
    "check_sites",
    "get_traces",
    "make_objective",
    "objective_names",
    "trace_terms",
]
