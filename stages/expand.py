"""Prompt expansion ("recaptioning") and variants.

In: validated manifest rows (parameters already resolved against the job's sampling defaults).
Out: one row per variant, with `variant`, a stable `seed` and the `expanded_prompt`. The planner
(pipeline/plan.py) then adds each variant's `params_hash`.

The built-in expander is offline and deterministic: a short prompt is enriched with subject detail,
camera, lighting and style drawn from a fixed vocabulary by the variant's seed, so the same row always
expands the same way. Long prompts (already detailed) are kept as they are, plus an explicit style.
It runs in the driver, while planning: it is pure Python and needs no worker.
"""
from __future__ import annotations

import random
import time
from typing import Literal

from pydantic import Field

from stages.base import Stage, Strict

DETAILS = ["highly detailed textures", "natural motion", "realistic proportions", "fine surface detail",
           "subtle depth of field", "crisp focus on the subject", "rich color", "soft film grain"]
CAMERAS = ["slow dolly-in", "wide establishing shot", "smooth tracking shot", "static tripod shot",
           "low-angle shot", "aerial drone shot", "handheld close-up", "slow orbit around the subject"]
LIGHTING = ["golden hour lighting", "soft overcast light", "dramatic rim light", "blue hour ambience",
            "warm practical lights", "high-key studio lighting", "volumetric light through haze",
            "moonlit night"]
STYLES = ["cinematic", "photorealistic", "documentary", "35mm film", "commercial product", "anime",
          "watercolor", "vintage"]
# A prompt with at least this many words is treated as already detailed.
DETAILED_WORDS = 25


class ExpandOptions(Strict):
    """No resources or batch size: the template runs in the driver, while planning."""

    mode: Literal["template", "none"] = "template"
    styles: list[str] = Field(default_factory=list, description="styles to draw from; empty = built-in list")


class ExpandStage(Stage):
    name = "expand"
    Options = ExpandOptions

    def expand_prompt(self, prompt: str, seed: int, style: str | None) -> str:
        rng = random.Random(seed)
        style = style or rng.choice(self.options.styles or STYLES)
        if self.options.mode == "none":
            return prompt
        base = prompt.strip().rstrip(".")
        if len(base.split()) >= DETAILED_WORDS:
            return f"{base}. {style} style."
        return (f"{base}, {rng.choice(DETAILS)}, {rng.choice(CAMERAS)}, {rng.choice(LIGHTING)}, "
                f"{style} style.")

    def __call__(self, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            start = time.perf_counter()
            for variant in range(row["num_variants"]):
                seed = (row["seed"] + variant) % 2**31
                v = {k: val for k, val in row.items() if k != "num_variants"}
                v.update(variant=variant, seed=seed, status="pending", error=None, reasons=[], metrics={},
                         expanded_prompt=self.expand_prompt(row["prompt"], seed, row.get("style")))
                v["stage_seconds"] = {"expand": (time.perf_counter() - start) / row["num_variants"]}
                out.append(v)
        return out
