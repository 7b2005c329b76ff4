"""Speed options of the sampler: diffusers cache hooks, attention backend, regional compilation, fp8 weight
storage, group offload and quantization. They are job-file options under `sample:` (stages/sample.py).

In: a loaded pipeline (or the arguments of its `from_pretrained`). Out: the same pipeline, faster. Every
option that can change pixels is returned by `pixel_settings()` and so goes into `params_hash`; group
offload only moves weights between devices and does not.

Cache hooks are enabled around each pipeline call (`cache_enabled`) rather than once at load: MagCache and
the attention-broadcast caches need the call's number of steps or current timestep, and a call's cache
state must never leak into the next call. With the batch-invariant forward, each item keeps its own cache
state (stages/models/families/base.py `_split_batch_forward`), so batching still never changes pixels.
"""
from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from stages.common.strict import Strict

# The thresholds and ranges each cache kind takes (diffusers 0.42 config fields; callables left out).
CACHE_KEYS = {
    "first_block": {"threshold"},
    "taylorseer": {"cache_interval", "disable_cache_before_step", "disable_cache_after_step", "max_order",
                   "cache_identifiers"},
    "pyramid_attention_broadcast": {
        "spatial_attention_block_skip_range", "temporal_attention_block_skip_range",
        "cross_attention_block_skip_range", "spatial_attention_timestep_skip_range",
        "temporal_attention_timestep_skip_range", "cross_attention_timestep_skip_range"},
    "faster": {
        "spatial_attention_block_skip_range", "spatial_attention_timestep_skip_range",
        "unconditional_batch_skip_range", "unconditional_batch_timestep_skip_range",
        "alpha_low_frequency", "alpha_high_frequency"},
    "mag": {"threshold", "max_skip_steps", "retention_ratio", "mag_ratios", "calibrate"},
}
CACHE_DEFAULTS = {  # what Rushes sets when the job file does not: diffusers' documented starting points
    "pyramid_attention_broadcast": {"spatial_attention_block_skip_range": 2},
    # diffusers' default patterns ("^blocks.*attn", matched whole) miss the video transformers' `attn1`/`attn2`
    # modules, so TaylorSeer would silently hook nothing: name every family's attention modules instead.
    "taylorseer": {"cache_identifiers": [r"^(blocks|transformer_blocks|single_transformer_blocks)\.\d+\.attn\d?$"]},
}


class CacheOptions(Strict):
    """One diffusers cache hook on the denoiser: `kind` plus that kind's own settings."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    kind: Literal["first_block", "taylorseer", "pyramid_attention_broadcast", "faster", "mag"] = Field(
        ..., description="the hook; its own settings sit beside it (threshold, ...)")

    @model_validator(mode="after")
    def _known_settings(self) -> "CacheOptions":
        allowed = CACHE_KEYS[self.kind]
        unknown = sorted(set(self.model_extra or {}) - allowed)
        if unknown:
            raise ValueError(f"cache kind '{self.kind}' has no setting {', '.join(unknown)} "
                             f"(allowed: {', '.join(sorted(allowed))})")
        return self

    def settings(self) -> dict[str, Any]:
        return {**CACHE_DEFAULTS.get(self.kind, {}), **(self.model_extra or {})}


class GroupOffloadOptions(Strict):
    num_blocks_per_group: int = Field(1, ge=1, description="transformer blocks moved onto the GPU at a time")
    use_stream: bool = Field(False, description="prefetch the next group on a CUDA stream")


TORCHAO_TYPES = {"int8wo": "Int8WeightOnlyConfig", "int8dq": "Int8DynamicActivationInt8WeightConfig",
                 "int4wo": "Int4WeightOnlyConfig", "float8wo": "Float8WeightOnlyConfig",
                 "float8dq": "Float8DynamicActivationFloat8WeightConfig"}


class QuantizationOptions(Strict):
    backend: Literal["torchao", "bitsandbytes_8bit", "bitsandbytes_4bit"] = Field(
        "torchao", description="torchao (CPU or GPU), bitsandbytes (CUDA only)")
    quant_type: str = Field("int8wo", description="torchao: int8wo, int8dq, int4wo, float8wo, float8dq")
    components: list[str] = Field(default_factory=lambda: ["transformer", "transformer_2"],
                                  description="the pipeline components to quantize (those the checkpoint has)")


class SpeedOptions(Strict):
    """The sampler's speed options (all off by default)."""

    cache: CacheOptions | None = Field(None, description="a diffusers cache hook: first_block, taylorseer, "
                                                         "pyramid_attention_broadcast, faster or mag")
    attention_backend: str | None = Field(None, description="native, flash, sage, _native_cudnn, ... (no *_hub)")
    compile_repeated_blocks: bool = Field(False, description="regional torch.compile of the repeated blocks")
    fp8_storage: bool = Field(False, description="store transformer weights in float8_e4m3fn, compute in the model dtype")
    group_offload: GroupOffloadOptions | None = Field(None, description="keep the transformer on the CPU, blocks "
                                                                        "moved to the GPU as they run")
    offload_text_encoder: bool = Field(False, description="keep the text encoders in CPU memory, their layers moved "
                                                         "to the GPU as they run (saves their GBs, costs a copy per "
                                                         "prompt; same pixels)")
    quantization: QuantizationOptions | None = Field(None, description="the denoiser's weights quantized at load")

    @model_validator(mode="after")
    def _no_hub_kernels(self) -> "SpeedOptions":
        if self.attention_backend and self.attention_backend.endswith("_hub"):
            raise ValueError(f"attention_backend '{self.attention_backend}' downloads its kernels at run time; "
                             "use an installed backend (native, flash, sage, _native_cudnn, ...)")
        if self.group_offload and self.compile_repeated_blocks:
            raise ValueError("group_offload and compile_repeated_blocks cannot be combined (offload hooks break "
                             "the compiled graphs)")
        return self

    def pixel_settings(self) -> dict[str, Any]:
        """The options that change pixels; group offload does not (same weights, same kernels)."""
        out: dict[str, Any] = {}
        if self.cache:
            out["cache"] = {"kind": self.cache.kind, **self.cache.settings()}
        if self.attention_backend:
            out["attention_backend"] = self.attention_backend
        if self.compile_repeated_blocks:
            out["compile_repeated_blocks"] = True
        if self.fp8_storage:
            out["fp8_storage"] = True
        if self.quantization:
            out["quantization"] = self.quantization.model_dump()
        return out


# Cache kinds whose hooks keep one state per hook, not per cache context: the per-item split of the
# batch-invariant forward cannot give each variant its own state, so they run one variant per call.
SHARED_STATE_CACHES = ("pyramid_attention_broadcast", "faster")


def check_batching(speed: SpeedOptions, batch_size: int, batch_invariant: bool) -> None:
    """Raise when the cache hook cannot keep batching from changing pixels (checked when the job is loaded)."""
    cache = speed.cache.kind if speed.cache else None
    if cache in SHARED_STATE_CACHES and batch_invariant and batch_size > 1:
        raise ValueError(f"cache kind '{cache}' keeps one state for the whole batch, so a variant's pixels would "
                         "depend on its batch-mates: use batch_size 1 with it (or a cache kind with per-item "
                         "state: first_block, taylorseer, mag)")
    if cache == "faster" and batch_invariant:
        raise ValueError("cache kind 'faster' cannot run with the batch-invariant per-item forward (it splits the "
                         "[unconditional, conditional] batch itself): set batch_invariant false, and know that a "
                         "variant's pixels then depend on its batch-mates")


def takes_mask(backend: str) -> bool:
    """Whether a diffusers attention backend takes an attention mask (diffusers 0.42.1's attention_dispatch.py: the
    flash-attn 2/3/4, PyTorch-flash, XLA, aiter and sage kernels raise "`attn_mask` is not supported"; their
    varlen forms take a padding mask)."""
    return not (backend in ("flash", "_flash_3", "_native_flash", "_native_xla") or "flash_4" in backend
                or backend.startswith(("aiter", "_sage")) or (backend.startswith("sage") and "varlen" not in backend))


def half_precision_only(backend: str) -> bool:
    """Flash, sage and cuDNN attention kernels run in float16/bfloat16 only."""
    return "flash" in backend or "sage" in backend or backend == "_native_cudnn" or backend.startswith("aiter")


def check_family(speed: SpeedOptions, family, dtype: str = "bfloat16") -> None:
    """Raise when a speed option cannot run with this family in this dtype (checked when the job file is loaded,
    and again when the sampler is set up)."""
    name = family.name
    backend = speed.attention_backend
    if backend and not family.dispatches_attention:
        raise ValueError(f"attention_backend: family '{name}''s attention processor calls PyTorch's SDPA itself and "
                         "ignores the backend; leave it unset")
    if backend and half_precision_only(backend) and dtype == "float32":
        raise ValueError(f"attention_backend: '{backend}' runs in float16/bfloat16 only, and model.dtype is float32")
    if backend and family.masks_attention and not takes_mask(backend):
        raise ValueError(f"attention_backend: family '{name}' passes an attention mask, which '{backend}' cannot "
                         "take; use native, _native_cudnn, _native_efficient, flex or xformers")
    if speed.compile_repeated_blocks and family.transformer_class:
        import diffusers

        if not getattr(getattr(diffusers, family.transformer_class), "_repeated_blocks", None):
            raise ValueError(f"compile_repeated_blocks: {family.transformer_class} (family '{name}') declares no "
                             "repeated blocks to compile; leave it off for this family")
    if speed.cache and speed.cache.kind == "faster" and name not in ("ltx", "cogvideox"):
        raise ValueError(f"cache kind 'faster' needs a family that batches its unconditional and conditional "
                         f"passes (ltx, cogvideox); '{name}' runs them separately")


def from_pretrained_kwargs(speed: SpeedOptions | None, components: tuple[str, ...], path: str | None = None,
                           revision: str | None = None, device: str | None = None) -> dict:
    """Arguments of the pipeline's `from_pretrained` (quantization is applied while loading)."""
    if speed is None or speed.quantization is None:
        return {}
    backend = speed.quantization.backend
    if backend.startswith("bitsandbytes"):
        if device is not None and not device.startswith("cuda"):
            raise ValueError(f"sample.quantization.backend {backend}: diffusers' bitsandbytes quantizer needs a CUDA "
                             f"GPU, and this sampler runs on {device}; on CPU use backend torchao")
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"sample.quantization.backend {backend}: bitsandbytes is not installed "
                             "(pip install bitsandbytes)")
    if path is not None:  # only the components this checkpoint has (Wan2.1 has no transformer_2)
        from diffusers import DiffusionPipeline

        index = DiffusionPipeline.load_config(path, revision=revision)
        components = tuple(c for c in components if (index.get(c) or [None])[0] is not None)
    import diffusers

    q = speed.quantization
    wanted = [c for c in q.components if c in components] or list(components[:1])
    if q.backend == "torchao":
        def make():
            import torchao.quantization as tq

            if q.quant_type not in TORCHAO_TYPES:
                raise ValueError(f"quantization.quant_type '{q.quant_type}' (torchao: {', '.join(TORCHAO_TYPES)})")
            return diffusers.TorchAoConfig(getattr(tq, TORCHAO_TYPES[q.quant_type])())
    else:
        def make():
            key = "load_in_8bit" if q.backend == "bitsandbytes_8bit" else "load_in_4bit"
            return diffusers.BitsAndBytesConfig(**{key: True})
    # one config per component (quant_mapping): diffusers' quant_kwargs form rejects torchao's signature
    config = diffusers.PipelineQuantizationConfig(quant_mapping={c: make() for c in wanted})
    return {"quantization_config": config}


def apply_at_load(pipe, speed: SpeedOptions | None, transformers: tuple[str, ...], device: str) -> bool:
    """Apply the load-time options to the pipeline's transformers. Returns True when the pipeline still has
    to be moved to `device` as a whole (group offload moves the transformers itself)."""
    if speed is None:
        return True
    import torch

    models = [getattr(pipe, n) for n in transformers if getattr(pipe, n, None) is not None]
    for m in models:
        if speed.attention_backend:
            m.set_attention_backend(speed.attention_backend)
        if speed.fp8_storage:
            m.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=m.dtype)
    if speed.group_offload:
        for m in models:
            m.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                   offload_type="block_level",
                                   num_blocks_per_group=speed.group_offload.num_blocks_per_group,
                                   use_stream=speed.group_offload.use_stream and device == "cuda")
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and name not in transformers:
                component.to(device)
        return False
    return True


def offload_text_encoders(pipe, speed: SpeedOptions | None, device: str) -> None:
    """`offload_text_encoder`: each text encoder's weights stay in CPU memory and each layer is copied to `device`
    when it runs (accelerate's cpu_offload): a 14B Wan sampler keeps umT5-XXL's 11 GB off the GPU for about a
    second of copying per prompt, against minutes of denoising. Same weights, same kernels: same pixels."""
    if speed is None or not speed.offload_text_encoder:
        return
    from accelerate import cpu_offload

    for name in ("text_encoder", "text_encoder_2", "image_encoder"):
        component = getattr(pipe, name, None)
        if component is not None:
            component.to("cpu")
            cpu_offload(component, execution_device=device)


def compile_blocks(pipe, speed: SpeedOptions | None, transformers: tuple[str, ...]) -> None:
    """Regional compilation, after the batch-invariant wrapper is in place (only the blocks are compiled)."""
    if speed is None or not speed.compile_repeated_blocks:
        return
    # A cache hook's decision functions are torch.compiler.disable'd: a block around them cannot be one graph
    fullgraph = speed.cache is None
    for n in transformers:
        m = getattr(pipe, n, None)
        if m is not None:
            m.compile_repeated_blocks(fullgraph=fullgraph)


def _cache_config(pipe, cache: CacheOptions, num_inference_steps: int, family):
    import diffusers

    s = cache.settings()
    # a conditioned row runs another pipeline over the same transformer (families/base.py conditioned_pipeline)
    timestep = {"current_timestep_callback": lambda: getattr(pipe, "_rushes_active", pipe).current_timestep}
    if cache.kind == "first_block":
        return diffusers.FirstBlockCacheConfig(**s)
    if cache.kind == "taylorseer":
        return diffusers.TaylorSeerCacheConfig(**s)
    if cache.kind == "pyramid_attention_broadcast":
        return diffusers.PyramidAttentionBroadcastConfig(**s, **timestep)
    if cache.kind == "faster":
        return diffusers.FasterCacheConfig(**s, **timestep, tensor_format=family.tensor_format,
                                           is_guidance_distilled=family.guidance_distilled)
    if cache.kind == "mag":
        if not s.get("calibrate") and not s.get("mag_ratios"):
            raise ValueError("cache kind 'mag' needs mag_ratios for this model (run once with calibrate: true; "
                             "the ratios are logged at the end of the call)")
        return diffusers.MagCacheConfig(**s, num_inference_steps=num_inference_steps)
    raise AssertionError(cache.kind)


@contextlib.contextmanager
def cache_enabled(pipe, speed: SpeedOptions | None, transformers: tuple[str, ...], num_inference_steps: int,
                  family=None):
    """The cache hook on every transformer for one pipeline call, removed (with its state) afterwards."""
    if speed is None or speed.cache is None:
        yield
        return
    models = [getattr(pipe, n) for n in transformers if getattr(pipe, n, None) is not None]
    for m in models:  # each transformer its own config: hooks hold per-model state
        m.enable_cache(_cache_config(pipe, speed.cache, num_inference_steps, family))
    try:
        yield
    finally:
        for m in models:
            m.disable_cache()
