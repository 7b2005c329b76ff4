"""VAE decoding: latents to uint8 frames.

In: rows carrying `latents`. Out: the same rows with `frames` (uint8 (T, H, W, 3)) and the latents
dropped, or `status="failed"` when the VAE produced NaN/Inf. Only the VAE is loaded, never the
denoiser, so decode replicas are cheap to scale separately from sampling.
"""
from __future__ import annotations

import time

from pipeline.spec import DecodeSpec, ModelSpec
from stages.checkpoints import resolve_model_path
from stages.families import family_for
from stages.sample import pick_device


class DecodeStage:
    def __init__(self, model: ModelSpec, spec: DecodeSpec, num_threads: int | None = None):
        self.model = model
        self.spec = spec
        self.family = family_for(model.family)
        self.num_threads = num_threads
        self.vae = None

    def setup(self) -> None:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self.vae = self.family.load_vae(resolve_model_path(self.model.path), self.model.dtype,
                                        pick_device(self.spec.resources.num_gpus), revision=self.model.revision)

    def __call__(self, rows: list[dict]) -> list[dict]:
        if self.vae is None:
            self.setup()
        for r in rows:
            latents = r.pop("latents", None)
            if r["status"] != "pending":
                continue
            start = time.perf_counter()
            try:
                frames, finite = self.family.decode(self.vae, latents)
            except Exception as e:  # noqa: BLE001 - recorded on the row
                r.update(status="failed", error=f"decode: {type(e).__name__}: {e}")
                continue
            finally:
                r["stage_seconds"]["decode"] = time.perf_counter() - start
            if not finite:
                r.update(status="failed", error="decode: VAE output contains NaN or Inf")
                continue
            r["frames"] = frames
        return rows
