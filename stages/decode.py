"""VAE decoding: latents to uint8 frames.

In: rows carrying `latents`. Out: the same rows with `frames` (stages/media/frames.py: uint8 (T, H, W, 3)
held whole, or for a long video in storage a segment at a time) and the latents dropped, or `status="failed"`
when the VAE produced NaN/Inf. Only the VAE is loaded, never the
denoiser, so decode replicas are cheap to scale separately from sampling.
"""
from __future__ import annotations

import time

from typing import Literal

from pydantic import Field

from stages.contract import Stage, StageOptions
from stages.models.devices import gpu_peak_gib, pick_device, prepare_device, use_threads
from stages.long_video.segments import store_for
from stages.long_video.stream import write_chunks
from stages.long_video.windows import is_streamed, segment_frames
from stages.media.frames import FrameArray
from stages.models.checkpoints import resolve_model_path
from stages.models.cpu_kernels import speed_up_cpu_decode
from stages.models.families import family_for


class DecodeOptions(StageOptions):
    # auto: beside the sampler on each GPU of a multi-GPU cluster, half of one GPU, or on CPUs a replica per two
    # CPUs (pipeline/capacity.py)
    RESOURCE_DEFAULTS = {"num_gpus": "auto", "replicas": "auto"}
    loads_model = True
    # On CPU, convolutions through oneDNN and Wan's RMS norm vectorized: the same arithmetic up to float
    # rounding, several times faster on a batch of one (stages/models/cpu_kernels.py). Not in params_hash, like
    # the thread count. false: PyTorch's own choices.
    fast_cpu_kernels: bool = Field(True, description="on CPU, oneDNN convolutions and a vectorized Wan RMS norm "
                                                     "(same arithmetic up to rounding)")
    tiling: Literal["auto", "on", "off"] = Field(
        "auto", description="decode in overlapping tiles (diffusers' vae.enable_tiling()): a fraction of the memory, "
                            "pixels blended at the seams; auto: on for the families whose real checkpoints need it at "
                            "their recommended size (HunyuanVideo, CogVideoX)")

    def resolved(self, path: str, family) -> "DecodeOptions":
        if self.tiling != "auto":
            return self
        return self.model_copy(update={"tiling": "on" if family.tiles_by_default(path) else "off"})

    def check_model(self, model, family) -> str | None:
        if self.tiling == "on" and not family.can_tile:
            return f"tiling: family '{family.name}' has no VAE to tile"
        return None

    def pixel_settings(self) -> dict:
        # tiling blends pixels at the seams; only when on, so libraries made before it keep their params_hash
        return {"decode": {"vae_tiling": True}} if self.tiling == "on" else {}


class DecodeStage(Stage):
    name = "decode"
    Options = DecodeOptions
    holds_model = True
    reads = ("latents",)
    writes = ("frames", "vae_dtype", "vae_tiling")
    consumes = ("latents",)

    def __init__(self, options=None, ctx=None):
        super().__init__(options, ctx)
        self.family = family_for(self.ctx.model.family)
        self.vae = None
        self.device = "cpu"

    def setup(self) -> None:
        use_threads(self.options.resources.num_cpus)
        m = self.ctx.model
        self.device = device = pick_device(self.options.resources.num_gpus)
        prepare_device(device, self.options.resources.num_gpus)
        local = resolve_model_path(m.path, self.ctx.storage_options)  # in object storage: copied once per node
        self.vae = self.family.load_vae(local, m.dtype_on(device), device, revision=m.revision, model=m)
        if self.options.tiling == "on":
            self.vae.enable_tiling()
        if self.options.fast_cpu_kernels:
            speed_up_cpu_decode(self.vae)
        self.vae_dtype = self.family.vae_dtype_for(m.dtype_on(device))

    def __call__(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            latents = r.pop("latents", None)
            if r["status"] != "pending":
                continue
            start = time.perf_counter()
            try:
                # LTX's timestep-conditioned VAE mixes in noise: seeded by the variant, like its sampling
                seed = {"seed": r["seed"]} if self.family.decode_uses_seed else {}
                if is_streamed(r):  # a long video: its frames go to storage a segment at a time (stages/long_video/stream.py)
                    store = store_for(self.ctx, r)
                    frames, finite = write_chunks(self.family.decode_chunks(self.vae, latents),
                                                  segment_frames(r, self.family.temporal_stride), store.fs,
                                                  store.folder, self.ctx.storage_options)
                else:
                    array, finite = self.family.decode(self.vae, latents, **seed)
                    frames = FrameArray(array)
            except Exception as e:  # noqa: BLE001 - recorded on the row
                r.update(status="failed", error=f"decode: {type(e).__name__}: {e}")
                continue
            finally:
                r["stage_seconds"]["decode"] = time.perf_counter() - start
                peak = gpu_peak_gib(self.device)
                if peak is not None:
                    r["gpu_peak_gib"] = {**(r.get("gpu_peak_gib") or {}), "decode": peak}
            if not finite:
                r.update(status="failed", error="decode: VAE output contains NaN or Inf")
                continue
            r["frames"] = frames
            # streamed frames go through the VAE a latent frame at a time, never in tiles
            r.update(vae_dtype=self.vae_dtype, vae_tiling=self.options.tiling == "on" and not frames.streamed)
        return rows
