"""Pixel samplers: which pixels the network sees each training step, and with what weight.

- :class:`AllPixels`: every pixel (full-batch training).
- :class:`UniformRandom`: uniformly random pixels.
- :class:`StratifiedPoints`: nuir's: one fresh sample per point per step in the point's stratum,
  strata split where the network's error is largest.
- :class:`EVOS`, :class:`INT`, :class:`SoftMining`: the published sample-selection methods,
  re-implemented after their papers and released code (each module cites the commit).

The interface is :class:`PixelSampler` (``models.sampling.base``).
"""

from models.point_set import Adaptation
from models.sampling.base import PixelBatch, PixelSampler, StepContext
from models.sampling.evos import EVOS
from models.sampling.simple import AllPixels, UniformRandom
from models.sampling.soft_mining import SoftMining
from models.sampling.strata import StratifiedPoints
from models.sampling.teaching import INT

__all__ = [
    "EVOS",
    "INT",
    "Adaptation",
    "AllPixels",
    "PixelBatch",
    "PixelSampler",
    "SoftMining",
    "StepContext",
    "StratifiedPoints",
    "UniformRandom",
]
