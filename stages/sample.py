"""Diffusion sampling: expanded prompts to latents.

In: variant rows with `status == "pending"`; a conditioned row's image, last image or clip is read by its URI
here. Out: the same rows with `latents` (float32 array (C, T', H', W')), or `status="failed"` and an `error`
when sampling broke or produced NaN/Inf (or a conditioning file changed since planning). Rows in any other state
pass through untouched.

Variants that share a shape bucket (`stages.common.variant.BUCKET_FIELDS`) go through one pipeline call, each
with its own `torch.Generator`, so that its noise, and with the family's batch-invariant forward its
pixels, do not depend on which rows it was batched with.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
from pydantic import Field, model_validator

from stages.contract import Stage, StageOptions
from stages.models.devices import gpu_peak_gib, pick_device, prepare_device, use_threads
from stages.common.variant import BUCKET_FIELDS, sampling_params
from stages.long_video.segments import store_for
from stages.media.conditioning import COLUMNS, Target, load
from stages.models.checkpoints import resolve_model_path
from stages.models.families import family_for
from stages.models.lora import staged_loras
from stages.models.protocol import VariantInput
from stages.models.speed import SpeedOptions, cache_enabled, check_batching, check_family, takes_mask


FREE_BLOCK_ROWS = 16  # rows per block when sampling costs nothing (block_rows)


class SampleOptions(StageOptions, SpeedOptions):
    """Batching, and the speed options of stages/models/speed.py (cache hooks, attention backend, compilation, fp8
    storage, group offload, quantization) flat under `sample:`."""

    # 1: with batch-invariant forwards each variant is denoised in its own forward anyway, and one variant
    # per call streams the first videos into decoding sooner. Raise it with batch_invariant: false.
    batch_size: int = Field(1, ge=1, description="variants per pipeline call (same shape only)")
    batch_invariant: bool = Field(
        True, description="denoise each variant in its own forward so batching never changes pixels")
    # auto: on a cluster of 2 GPUs or more, one sampler per GPU, each with a decoder beside it in its actor
    # (pipeline/capacity.py run_together); on one GPU, half of it; on CPUs, one replica
    RESOURCE_DEFAULTS = {"num_gpus": "auto", "replicas": "auto"}
    loads_model = True  # the model's weights: `model.dtype: auto` follows where they run
    cpu_pool_grows = False

    @model_validator(mode="after")
    def _cache_fits_the_batching(self) -> "SampleOptions":
        check_batching(self, self.batch_size, self.batch_invariant)
        return self

    def check_model(self, model, family) -> str | None:
        try:
            check_family(self, family, model.dtype)
        except ValueError as e:
            return str(e)
        return None

    def check_row(self, row: dict) -> str | None:
        # SkyReels-V2 diffusion forcing masks attention block-causally with a causal block above 1 latent frame
        if self.attention_backend and (row.get("causal_block_size") or 1) > 1 and not takes_mask(self.attention_backend):
            return (f"causal_block_size: {row['causal_block_size']} makes the attention block-causal (a mask), which "
                    f"sample.attention_backend '{self.attention_backend}' cannot take")
        return None

    def pixel_settings(self) -> dict:
        speed = SpeedOptions.pixel_settings(self)
        # under their own key, and only when set: a job without speed options keeps its params_hash values
        return {"batch_invariant": self.batch_invariant, **({"sample_speed": speed} if speed else {})}


class SampleStage(Stage):
    name = "sample"
    Options = SampleOptions
    holds_model = True
    reads = ("expanded_prompt",)
    writes = ("latents",)
    paces_blocks = True  # a block between operators holds one sample batch: each free sampler takes the next

    def __init__(self, options=None, ctx=None):
        super().__init__(options, ctx)
        self.family = family_for(self.ctx.model.family)
        self.pipe = None
        self.device = "cpu"
        self.calls = 0  # pipeline calls made, for tests and benchmarks

    def setup(self) -> None:
        use_threads(self.options.resources.num_cpus)
        check_family(self.options, self.family, self.ctx.model.dtype_on(pick_device(self.options.resources.num_gpus)))
        m, where = self.ctx.model, self.ctx.storage_options  # weights in object storage: copied once per node
        m = m.model_copy(update={"loras": staged_loras(m.loras, where)})
        self.device = device = pick_device(self.options.resources.num_gpus)
        prepare_device(device, self.options.resources.num_gpus)
        self.pipe = self.family.load_pipeline(
            resolve_model_path(m.path, where), device, m,
            speed=self.options if self.speed_options_set else None, batch_invariant=self.options.batch_invariant)

    def block_rows(self) -> int:
        """One sample batch, so that each free sampler takes the next; but when sampling costs nothing (the null
        family without simulated GPU time) there is nothing to share out, and a block of FREE_BLOCK_ROWS spares
        every operator and the driver their per-block cost (bench/RESULTS.md, "The pipeline's own cost")."""
        if self.family.free_to_sample(self.ctx.model):
            return max(self.options.batch_size, FREE_BLOCK_ROWS)
        return self.options.batch_size

    @property
    def speed_options_set(self) -> bool:
        return any(getattr(self.options, k) != f.default for k, f in SpeedOptions.model_fields.items())

    def as_read(self, text: str) -> tuple[str, int | None, bool]:
        """`text` as the text encoder reads it: one longer than the family's token budget is cut there. With
        its length in the encoder's tokens and whether it was cut (None, False: a family without one)."""
        tokenizer = self.family.tokenizer(self.pipe)
        if tokenizer is None:  # a family without a text encoder (null)
            return text, None, False
        budget = self.family.max_sequence_length
        ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
        special = tokenizer.num_special_tokens_to_add()  # e.g. T5's end-of-sequence token
        if len(ids) + special <= budget:
            return text, len(ids) + special, False
        return tokenizer.decode(ids[:budget - special], skip_special_tokens=True), len(ids) + special, True

    def read_by_encoder(self, r: dict) -> str:
        """The row's prompt as the encoder reads it; the record says how long it was and whether it was cut
        (`prompt_tokens`, `truncated`) instead of the encoder dropping the rest silently."""
        text, tokens, cut = self.as_read(r["expanded_prompt"])
        r.update(prompt_tokens=tokens, truncated=cut)
        return text

    def shots_as_read(self, r: dict) -> list[dict] | None:
        """A storyboard's shots with each prompt as the encoder reads it (the record keeps them as written).
        The encoder reads the shots, not the row's prompt, so `prompt_tokens` is then the longest shot's and
        `truncated` says whether any shot was cut."""
        if not r.get("shots"):
            return None
        shots, lengths, cut_any = [], [], False
        for shot in r["shots"]:
            text, tokens, cut = self.as_read(shot.get("expanded_prompt") or shot["prompt"])
            shots.append({**shot, "expanded_prompt": text})
            lengths.append(tokens)
            cut_any = cut_any or cut
        r.update(prompt_tokens=None if None in lengths else max(lengths), truncated=cut_any)
        return shots

    def variant_input(self, r: dict) -> VariantInput:
        """A row's own inputs. A family that extends long videos saves and resumes each one's segments
        (stages/long_video/segments.py), and makes a storyboard's shots in order."""
        v = VariantInput(self.read_by_encoder(r), r["negative_prompt"], r["seed"])
        if self.family.extends:  # after read_by_encoder: a storyboard's shots set its prompt_tokens
            v.segments, v.shots = store_for(self.ctx, r), self.shots_as_read(r)
        self.add_conditioning(v, r)
        return v

    def add_conditioning(self, v: VariantInput, r: dict) -> None:
        """A conditioned row's image, last image or clip, read again by URI, checked against the hash planned for
        it and fitted to the variant's size (stages/media/conditioning.py). A file that changed since planning
        fails the variant, and the next run plans it with the new file."""
        for column in COLUMNS:
            if r.get(column):
                target = Target(r["width"], r["height"], r.get("conditioning_resize") or "crop")
                tail = self.family.video_tail(r, self.ctx.model.path) if column == "video" else None
                setattr(v, column, load(column, r[column], r[f"{column}_sha256"], target, self.ctx.storage_options,
                                        last_frames=tail))
        v.strength = r.get("conditioning_strength")

    def _sample(self, rows: list[dict]) -> np.ndarray:
        self.calls += 1
        inputs = [self.variant_input(r) for r in rows]
        with cache_enabled(self.pipe, self.options, self.family.transformers, rows[0]["num_inference_steps"],
                           self.family):
            return self.family.sample(self.pipe, inputs, sampling_params(rows[0]))

    def __call__(self, rows: list[dict]) -> list[dict]:
        buckets: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r["status"] == "pending":
                buckets[tuple(r.get(k) for k in BUCKET_FIELDS)].append(r)
        for group in buckets.values():
            for i in range(0, len(group), self.options.batch_size):
                self._run_batch(group[i:i + self.options.batch_size])
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
        peak = gpu_peak_gib(self.device)
        for r, z in zip(batch, latents):
            r["stage_seconds"]["sample"] = seconds
            if peak is not None:
                r["gpu_peak_gib"] = {**(r.get("gpu_peak_gib") or {}), "sample": peak}
            if z is None:
                continue
            if not np.isfinite(z).all():
                r.update(status="failed", error="sample: latents contain NaN or Inf")
                continue
            r["latents"] = z
