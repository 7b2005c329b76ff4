"""Model family adapters over diffusers pipelines.

A family knows the shapes its model can make (raised, never rounded), its recommended settings, how to
load the pipeline for sampling (latents out, no VAE) and the VAE alone for decoding (latents in, uint8
frames out), and how its latents are laid out in between. Sampling and decoding stages call these; they
hold no Ray code.

| family      | pipeline               | latents between stages       | frames | sizes            |
|-------------|------------------------|------------------------------|--------|------------------|
| `wan`       | WanPipeline            | (C, T', H', W'), normalized  | 4k+1   | x16 (TI2V-5B x32) |
| `skyreels`  | SkyReelsV2Pipeline     | (C, T', H', W'), normalized  | 4k+1   | x16              |
| `ltx`       | LTXPipeline            | unpacked (C, F', H', W')     | 8k+1   | x32              |
| `cogvideox` | CogVideoXPipeline      | (F', C, H', W'), scaled      | 4k+1   | x16              |
| `hunyuan`   | HunyuanVideoPipeline   | (C, T', H', W'), scaled      | 4k+1   | x16              |
| `skyreels_df` | SkyReelsV2DiffusionForcingPipeline, window by window | (C, T', H', W'), normalized | 4k+1 | x16 |
| `null`      | none (pipeline costs)  | (16, T', H', W') noise       | 4k+1   | x16              |
"""
from __future__ import annotations

from stages.models.families.base import TINY, DiffusersFamily  # noqa: F401
from stages.models.families.cogvideox import CogVideoXFamily
from stages.models.families.hunyuan import HunyuanFamily
from stages.models.families.ltx import LTXFamily
from stages.models.families.null import NullFamily
from stages.models.families.skyreels_df import SkyReelsDFFamily
from stages.models.families.wan import SkyReelsFamily, WanFamily

FAMILIES: dict[str, type] = {
    "wan": WanFamily, "ltx": LTXFamily, "cogvideox": CogVideoXFamily, "hunyuan": HunyuanFamily,
    "skyreels": SkyReelsFamily, "skyreels_df": SkyReelsDFFamily, "null": NullFamily,
}


def family_for(name: str):
    """A built-in family by name, or a user's own class named as 'package.module:ClassName' (it must be
    importable on every Ray worker, like any user code in a runtime environment)."""
    if name in FAMILIES:
        return FAMILIES[name]
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model family '{name}' cannot be imported: {e}") from None
    raise ValueError(f"unknown model family '{name}' (built-in: {', '.join(FAMILIES)}; "
                     "or 'package.module:ClassName')")
