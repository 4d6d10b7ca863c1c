"""Seed studies over the engine: reproductions that are not engine code (like optax's ``contrib``).

Same conventions as the engine (``eqx.Module`` objects, jit/vmap-able functions, clear errors),
but the engine never imports this package: ``meanfield.studies`` is loaded on first access
(``mf.studies``) or by an explicit import.

* [`rope_locality`][meanfield.studies.rope_locality]: RoPE at long context, Monte-Carlo locality and
  token-consistency estimators (Du et al. 2026).
* [`recall`][meanfield.studies.recall]: factual recall with random embeddings, a one-layer attention
  model trained with optax, storage capacity and its early-phase theory (Vural et al. 2026).
* [`learned_pe`][meanfield.studies.learned_pe]: a positional encoding with a fixed number of Fourier
  coefficients, fitted with optax so that the limit of the additive-PE dynamics is a chosen
  target (universality, Imaizumi et al. 2026).
* [`decoders`][meanfield.studies.decoders]: random-initialisation GPT-2/Qwen2-style decoders and their
  step-0 influence profiles (position bias at birth).
"""

from . import decoders as decoders
from . import learned_pe as learned_pe
from . import recall as recall
from . import rope_locality as rope_locality
from .decoders import Decoder as Decoder
from .decoders import DecoderConfig as DecoderConfig
from .decoders import step0_influence as step0_influence

__all__ = [
    "decoders",
    "learned_pe",
    "recall",
    "rope_locality",
    "Decoder",
    "DecoderConfig",
    "step0_influence",
]
