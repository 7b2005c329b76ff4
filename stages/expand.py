"""Prompt expansion ("recaptioning") and variants.

In: validated manifest rows (parameters already resolved against the job's sampling defaults).
Out: one row per variant, with `variant`, a stable `seed`, the `expanded_prompt` and the `params_hash`
of everything that determines its pixels.

The built-in expander is offline and deterministic: a short prompt is enriched with subject detail,
camera, lighting and style drawn from a fixed vocabulary by the variant's seed, so the same row always
expands the same way. Long prompts (already detailed) are kept as they are, plus an explicit style.
"""
from __future__ import annotations

import hashlib
import json
import random
import time

from pipeline.spec import ExpandSpec

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


def params_hash(params: dict) -> str:
    """sha256 of the canonical JSON of everything that determines a variant's pixels."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# The row fields that, with the model and encoder settings, decide the pixels.
PIXEL_FIELDS = ("expanded_prompt", "negative_prompt", "seed", "height", "width", "num_frames", "fps",
                "num_inference_steps", "guidance_scale")


class ExpandStage:
    def __init__(self, spec: ExpandSpec, pixel_settings: dict):
        """`pixel_settings`: model identity and encoder settings, folded into every `params_hash`."""
        self.spec = spec
        self.pixel_settings = pixel_settings
        self.styles = spec.styles or STYLES

    def setup(self) -> None:
        """Nothing to load: the template expander is pure Python."""

    def expand_prompt(self, prompt: str, seed: int, style: str | None) -> str:
        rng = random.Random(seed)
        style = style or rng.choice(self.styles)
        if self.spec.mode == "none":
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
                v["params_hash"] = params_hash(
                    {**self.pixel_settings, **{k: v[k] for k in PIXEL_FIELDS}})
                v["stage_seconds"] = {"expand": (time.perf_counter() - start) / row["num_variants"]}
                out.append(v)
        return out
