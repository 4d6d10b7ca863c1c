"""Closed forms and independent reference solutions used to check the engine.

One module per subject:


* [`pushforward`][meanfield.theory.pushforward]: maximisers of the interaction energy with auxiliary variables (the pushforward
  limit of additive PEs and prompts) and inverse prompt design;
* [`rates`][meanfield.theory.rates]: linear growth rates about the uniform state (circle, sphere, causal coupling);
* [`kinetic`][meanfield.theory.kinetic]: the kinetic lost-in-the-middle paper's closed forms;
* [`cesaro`][meanfield.theory.cesaro]: Cesàro theory of position bias and masks as graphs;
* [`noise`][meanfield.theory.noise]: noisy dynamics on the sphere: critical noise, the tricritical beta,
  zonal stationary states.

Every name is available here as ``meanfield.theory.<name>``."""

from .pushforward import Maximiser as Maximiser
from .pushforward import additive_pe_pushforward as additive_pe_pushforward
from .pushforward import prompt_pushforward as prompt_pushforward
from .pushforward import InverseDesign as InverseDesign
from .pushforward import inverse_prompt as inverse_prompt
from .rates import circle_growth_rate as circle_growth_rate
from .rates import sphere_growth_rate as sphere_growth_rate
from .rates import sphere_kinetic_rate as sphere_kinetic_rate
from .rates import causal_coupling as causal_coupling
from .rates import causal_mode_propagator as causal_mode_propagator
from .kinetic import kinetic_rates as kinetic_rates
from .kinetic import kinetic_weights as kinetic_weights
from .kinetic import kinetic_psi as kinetic_psi
from .kinetic import kinetic_green as kinetic_green
from .kinetic import kinetic_profile as kinetic_profile
from .kinetic import kinetic_tcrit as kinetic_tcrit
from .kinetic import kinetic_propagator_profile as kinetic_propagator_profile
from .kinetic import right_slope_crossing as right_slope_crossing
from .kinetic import kinetic_propagator_tcrit as kinetic_propagator_tcrit
from .cesaro import cesaro_matrix as cesaro_matrix
from .cesaro import cesaro_rollout as cesaro_rollout
from .cesaro import cesaro_density as cesaro_density
from .cesaro import cesaro_recency as cesaro_recency
from .cesaro import cesaro_mean_position as cesaro_mean_position
from .cesaro import mask_walk_drift as mask_walk_drift
from .noise import critical_noise as critical_noise
from .noise import funk_hecke as funk_hecke
from .noise import noisy_growth_rate as noisy_growth_rate
from .noise import rqf_synchronisation_rate as rqf_synchronisation_rate
from .noise import stationary_branch as stationary_branch
from .noise import stationary_states as stationary_states
from .noise import tricritical_beta as tricritical_beta

__all__ = [
    "Maximiser",
    "additive_pe_pushforward",
    "prompt_pushforward",
    "InverseDesign",
    "inverse_prompt",
    "circle_growth_rate",
    "sphere_growth_rate",
    "sphere_kinetic_rate",
    "causal_coupling",
    "causal_mode_propagator",
    "kinetic_rates",
    "kinetic_weights",
    "kinetic_psi",
    "kinetic_green",
    "kinetic_profile",
    "kinetic_tcrit",
    "kinetic_propagator_profile",
    "right_slope_crossing",
    "kinetic_propagator_tcrit",
    "cesaro_matrix",
    "cesaro_rollout",
    "cesaro_density",
    "cesaro_recency",
    "cesaro_mean_position",
    "mask_walk_drift",
    "critical_noise",
    "rqf_synchronisation_rate",
    "stationary_branch",
    "funk_hecke",
    "noisy_growth_rate",
    "stationary_states",
    "tricritical_beta",
]
