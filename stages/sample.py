"""Diffusion sampling: expanded prompts to latents.

In: variant rows with `status == "pending"`. Out: the same rows with `latents` (float32 array
(C, T', H', W')), or `status="failed"` and an `error` when sampling broke or produced NaN/Inf.
Rows in any other state pass through untouched.

Variants that share a shape bucket (height, width, frames, steps, guidance) go through one pipeline call,
each with its own `torch.Generator`, so that its noise, and with the family's batch-invariant forward
its pixels, do not depend on which rows it was batched with.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from pipeline.spec import ModelSpec, SampleSpec
from stages.checkpoints import resolve_model_path
from stages.families import family_for

BUCKET_FIELDS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")


def pick_device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


class SampleStage:
    def __init__(self, model: ModelSpec, spec: SampleSpec, num_threads: int | None = None):
        self.model = model
        self.spec = spec
        self.family = family_for(model.family)
        self.num_threads = num_threads
        self.pipe = None
        self.calls = 0  # pipeline calls made, for tests and benchmarks

    def setup(self) -> None:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self.pipe = self.family.load_pipeline(
            resolve_model_path(self.model.path), self.model.dtype, pick_device(self.spec.resources.num_gpus),
            revision=self.model.revision, batch_invariant=self.spec.batch_invariant)

    def _sample(self, rows: list[dict]) -> np.ndarray:
        self.calls += 1
        return self.family.sample(
            self.pipe, [r["expanded_prompt"] for r in rows], [r["negative_prompt"] for r in rows],
            [r["seed"] for r in rows], **{k: rows[0][k] for k in BUCKET_FIELDS})

    def __call__(self, rows: list[dict]) -> list[dict]:
        if self.pipe is None:
            self.setup()
        buckets: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r["status"] == "pending":
                buckets[tuple(r[k] for k in BUCKET_FIELDS)].append(r)
        for group in buckets.values():
            for i in range(0, len(group), self.spec.batch_size):
                self._run_batch(group[i:i + self.spec.batch_size])
        return rows

    def _run_batch(self, batch: list[dict]) -> None:
        start = time.perf_counter()
        try:
            latents = list(self._sample(batch))
        except Exception as e:  # noqa: BLE001 - one bad batch must not kill the others
            if len(batch) > 1:
                # Sample alone to find the row at fault; the others still get their video.
                for r in batch:
                    self._run_batch([r])
                return
            latents = [None]
            batch[0].update(status="failed", error=f"sample: {type(e).__name__}: {e}")
        seconds = (time.perf_counter() - start) / len(batch)
        for r, z in zip(batch, latents):
            r["stage_seconds"]["sample"] = seconds
            if z is None:
                continue
            if not np.isfinite(z).all():
                r.update(status="failed", error="sample: latents contain NaN or Inf")
                continue
            r["latents"] = z
