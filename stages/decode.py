"""VAE decoding: latents to uint8 frames.

In: rows carrying `latents`. Out: the same rows with `frames` (uint8 (T, H, W, 3)) and the latents
dropped, or `status="failed"` when the VAE produced NaN/Inf. Only the VAE is loaded, never the
denoiser, so decode replicas are cheap to scale separately from sampling.
"""
from __future__ import annotations

import time

from pydantic import Field

from stages.base import Stage, StageOptions, pick_device, use_threads
from stages.checkpoints import resolve_model_path
from stages.cpu_kernels import speed_up_cpu_decode
from stages.families import family_for
from stages.stream import is_streamed, stream_decode


class DecodeOptions(StageOptions):
    # auto: a pool that grows to the cluster's GPUs, or on CPUs a replica per two CPUs (pipeline/graph.py)
    RESOURCE_DEFAULTS = {"num_gpus": 1.0, "replicas": "auto"}
    # On CPU, convolutions through oneDNN and Wan's RMS norm vectorized: the same arithmetic up to float
    # rounding, several times faster on a batch of one (stages/cpu_kernels.py). Not in params_hash, like
    # the thread count. false: PyTorch's own choices.
    fast_cpu_kernels: bool = Field(True, description="on CPU, oneDNN convolutions and a vectorized Wan RMS norm (same arithmetic up to rounding)")


class DecodeStage(Stage):
    name = "decode"
    Options = DecodeOptions
    holds_model = True

    def __init__(self, options=None, ctx=None):
        super().__init__(options, ctx)
        self.family = family_for(self.ctx.model.family)
        self.vae = None

    def setup(self) -> None:
        use_threads(self.options.resources)
        m = self.ctx.model
        self.vae = self.family.load_vae(resolve_model_path(m.path), m.dtype,
                                        pick_device(self.options.resources.num_gpus), revision=m.revision)
        if self.options.fast_cpu_kernels:
            speed_up_cpu_decode(self.vae)

    def __call__(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            latents = r.pop("latents", None)
            if r["status"] != "pending":
                continue
            start = time.perf_counter()
            try:
                # LTX's timestep-conditioned VAE mixes in noise: seeded by the variant, like its sampling
                seed = {"seed": r["seed"]} if getattr(self.family, "decode_uses_seed", False) else {}
                if is_streamed(r):  # a long video: its frames go to storage a segment at a time (stages/stream.py)
                    frames = None
                    r["frame_chunks"], finite = stream_decode(self.family, self.vae, r, latents, self.ctx)
                else:
                    frames, finite = self.family.decode(self.vae, latents, **seed)
            except Exception as e:  # noqa: BLE001 - recorded on the row
                r.update(status="failed", error=f"decode: {type(e).__name__}: {e}")
                continue
            finally:
                r["stage_seconds"]["decode"] = time.perf_counter() - start
            if not finite:
                r.update(status="failed", error="decode: VAE output contains NaN or Inf")
                continue
            if frames is not None:
                r["frames"] = frames
        return rows
