"""Equinox models: random-initialisation decoders (position bias at step 0)."""

from .decoder import Decoder as Decoder
from .decoder import DecoderConfig as DecoderConfig
from .decoder import step0_influence as step0_influence
