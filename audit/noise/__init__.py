"""Seed-to-seed noise: bands of K seeds of a config, and whether another config's curves lie outside them."""

from __future__ import annotations

from repro_audit.audit.noise.plan import VARY, seeded_configs
from repro_audit.audit.noise.result import NoiseResult, SideNoise
from repro_audit.audit.noise.run import noise_result, record_noise

__all__ = ["VARY", "NoiseResult", "SideNoise", "noise_result", "record_noise", "seeded_configs"]
