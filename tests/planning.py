"""Variants as the planner makes them (pipeline/plan.py), for tests that call stages directly."""
from __future__ import annotations

from stages.common.variant import SamplingParams, variants_of
from stages.models.protocol import VariantInput


def planned(stage, rows: list[dict], cells: list[dict] | None = None) -> list[dict]:
    """The variants of `rows` after the stage's driver-side `plan` (the template expander writes its prompts)."""
    out = []
    for row in rows:
        variants = variants_of(row, cells)
        stage.plan(row, variants)
        out += variants
    return out


def sample(family, pipe, prompts: list[str], negatives: list[str], seeds: list[int], segments=None, shots=None,
           **settings):
    """`family.sample` on plain lists: one VariantInput per prompt, the settings as one SamplingParams."""
    n = len(prompts)
    inputs = [VariantInput(p, ng, s, (segments or [None] * n)[i], (shots or [None] * n)[i])
              for i, (p, ng, s) in enumerate(zip(prompts, negatives, seeds))]
    return family.sample(pipe, inputs, SamplingParams(**settings))
