"""The attention kernel: scores, masks, auxiliary variables, prompts, heads, backends."""

from .attention import Attention as Attention
from .attention import precision_report as precision_report
from .backends import AbstractBackend as AbstractBackend
from .backends import Auto as Auto
from .backends import Chunked as Chunked
from .backends import Dense as Dense
from .backends import Fused as Fused
from .backends import Cudnn as Cudnn
from .backends import Splash as Splash
from .backends import default_backend as default_backend
from .encodings import AbstractPE as AbstractPE
from .encodings import AdditivePE as AdditivePE
from .encodings import RoPE as RoPE
from .encodings import ZBias as ZBias
from .encodings import gaussian as gaussian
from .encodings import random_fourier as random_fourier
from .encodings import rope_rotate as rope_rotate
from .encodings import sinusoidal as sinusoidal
from .masks import AbstractMask as AbstractMask
from .masks import ALiBi as ALiBi
from .masks import Causal as Causal
from .masks import PositionNormalized as PositionNormalized
from .masks import Compose as Compose
from .masks import Lowered as Lowered
from .masks import CustomBias as CustomBias
from .masks import Full as Full
from .masks import Slots as Slots
from .masks import Window as Window
from .problem import Normaliser as Normaliser
from .problem import Problem as Problem
from .tokens import ParallelPrompt as ParallelPrompt
from .tokens import Prompt as Prompt
from .tokens import TokenAux as TokenAux

__all__ = [
    "AbstractBackend",
    "Attention",
    "Chunked",
    "Dense",
    "Auto",
    "Fused",
    "default_backend",
    "Splash",
    "Cudnn",
    "precision_report",
    "AbstractPE",
    "AdditivePE",
    "RoPE",
    "ZBias",
    "gaussian",
    "random_fourier",
    "rope_rotate",
    "sinusoidal",
    "AbstractMask",
    "ALiBi",
    "Causal",
    "PositionNormalized",
    "Compose",
    "Lowered",
    "CustomBias",
    "Full",
    "Slots",
    "Window",
    "Normaliser",
    "Problem",
    "ParallelPrompt",
    "Prompt",
    "TokenAux",
]
