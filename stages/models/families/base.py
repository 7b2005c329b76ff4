"""What every diffusers family shares: loading without the VAE, per-item prompt encoding, seeded sampling to
latents, the batch-invariant forward, and VAE output to uint8 frames.

A family subclasses `DiffusersFamily` and says what differs: its pipeline and VAE classes, its shape rule,
its recommended settings, how it encodes one prompt, and how its latents are laid out and decoded.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

import numpy as np

from stages.common.variant import SamplingParams
from stages.long_video.windows import LONG_SETTINGS
from stages.media.frames import video_to_frames
from stages.models.checkpoints import trained_settings
from stages.models.devices import quiet_loading, torch_dtype
from stages.models.lora import load_loras
from stages.models.protocol import VariantInput
from stages.models.references import pipeline_class_of
from stages.models.speed import (SpeedOptions, apply_at_load, compile_blocks, from_pretrained_kwargs,
                                 offload_text_encoders)

# torch is imported where a model is loaded or run, never at import: CPU-only workers (validation,
# filter, encode) import this package and would otherwise pay ~3 CPU-s and ~400 MB each for torch.


def _split_batch_forward(module) -> None:
    """Make `module` run each batch item in its own forward and concatenate the results.

    CPU and GPU kernels (conv, small-M GEMMs) round differently for different batch sizes, so a batched
    forward would make a video's pixels depend on which other rows shared its batch. One item per forward
    keeps them identical whatever the batching; the pipeline call around it is still batched.

    With a diffusers cache hook on (first-block cache, TaylorSeer, ...), the hooks keep their state per cache
    context ("cond", "uncond"), so split items would share one state and each item's cache decisions would
    read the previous item's residuals. Each item therefore runs in its own context, `<name>#<i>`: the state
    an item sees is the state it would see alone.
    """
    import torch

    forward = module.forward

    @functools.wraps(forward)
    def per_item(*args: Any, **kwargs: Any):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        n = hidden.shape[0]
        if n == 1:
            return forward(*args, **kwargs)

        def item(v: Any, i: int) -> Any:
            return v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v

        context = _cache_context(module)
        outs = []
        for i in range(n):
            if context is not None:
                _set_context(module, context, f"{context.name}#{i}")
            outs.append(forward(*[item(a, i) for a in args], **{k: item(v, i) for k, v in kwargs.items()}))
        if context is not None:
            _set_context(module, context, context.name)
        first = outs[0]
        if isinstance(first, tuple):
            return tuple(torch.cat([o[j] for o in outs]) for j in range(len(first)))
        return type(first)(sample=torch.cat([o.sample for o in outs]))

    module.forward = per_item


def _cache_context(module):
    """The cache context the pipeline set around this forward, or None when no cache hook is on."""
    if not getattr(module, "is_cache_enabled", False):
        return None
    from diffusers.hooks.hooks import HookRegistry, StateManager

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for child in (registry, *registry._get_child_registries()):
        for hook in child.hooks.values():
            for attr in vars(hook).values():
                if isinstance(attr, StateManager) and attr._context is not None:
                    return attr._context
    return None


def _set_context(module, context, name: str) -> None:
    import dataclasses

    from diffusers.hooks.hooks import _set_cache_context

    _set_cache_context(module, dataclasses.replace(context, name=name))


def _cat(tensors: list):
    import torch

    return None if tensors[0] is None else torch.cat(tensors)


# The builtin tiny models' settings: small enough for a CPU, and the Wan defaults Rushes had before families
# recommended their own (so that tiny-wan's params_hash values did not change). `None` for `flow_shift`: the
# checkpoint's own scheduler config; for `guidance_scale_2`: none (only Wan2.2 A14B has a second expert); for
# `true_cfg_scale`: none (HunyuanVideo's true CFG is off unless asked for).
TINY = dict(height=96, width=160, num_frames=17, fps=8, num_inference_steps=4, guidance_scale=5.0,
            guidance_scale_2=None, flow_shift=None, true_cfg_scale=None)


_CLASS: dict = {}  # (family, path) -> its checkpoint's pipeline class, read once per path


class FamilyRules:
    """What a family knows without loading anything: the shapes and lengths its model can make, the settings
    it can use, and the ones it recommends. Every check returns None or a message naming the setting."""

    name: ClassVar[str]
    spatial_multiple: ClassVar[int] = 16  # VAE spatial factor x transformer patch
    temporal_stride: ClassVar[int] = 4  # frames must be stride*k+1
    frame_examples: ClassVar[str] = "17, 33, 49, 81"
    window: ClassVar[int | None] = None  # the most frames one window makes (its model card); None: unknown
    extends: ClassVar[bool] = False  # makes rows longer than its window (stages/long_video/)
    transformers: ClassVar[tuple[str, ...]] = ("transformer",)
    transformer_class: ClassVar[str | None] = None  # the denoiser's diffusers class (None: no model)
    pipeline_classes: ClassVar[tuple[str, ...]] = ()  # the checkpoints it runs (model_index.json's _class_name)
    decode_uses_seed: ClassVar[bool] = False  # decode adds seeded noise (LTX's timestep-conditioned VAE)
    tensor_format: ClassVar[str] = "BCFHW"  # the denoiser's hidden_states layout (FasterCache splits frames)
    guidance_distilled: ClassVar[bool] = False  # guidance embedded, no unconditional pass (HunyuanVideo)
    shifted: ClassVar[bool] = False  # a flow-matching scheduler with a fixed shift that `flow_shift` sets
    # Text tokens the encoder pads to: the pipeline's own default, which its model was trained with
    # (encode_prompt's own default differs for Wan: 226 vs the pipeline's 512). None: no text encoder.
    max_sequence_length: ClassVar[int | None] = 512
    # The real model's recommended settings (its model card / diffusers' docs); see `recommended`.
    RECOMMENDED: ClassVar[dict] = {}
    vae_dtype: ClassVar[str | None] = None  # in a half-precision run, the VAE's own dtype (None: the model's)
    can_tile: ClassVar[bool] = True  # its VAE decodes in tiles when asked (decode.tiling)
    masks_attention: ClassVar[bool] = False  # its denoiser always passes an attention mask (some backends refuse)
    dispatches_attention: ClassVar[bool] = True  # its attention honours diffusers' set_attention_backend
    tiled_by_default: ClassVar[bool] = False  # its real checkpoints need tiling at their recommended size
    conditioning_strength: ClassVar[bool] = False  # takes the job's conditioning.strength (LTX's conditions)
    pipeline_class: ClassVar[str] = ""  # the text-to-video class (the first of pipeline_classes)

    @classmethod
    def vae_dtype_for(cls, dtype: str) -> str:
        """The VAE's dtype in a run of the model in `dtype` (float32 runs keep everything in float32)."""
        return dtype if dtype == "float32" else cls.vae_dtype or dtype

    @classmethod
    def tiles_by_default(cls, path: str | None) -> bool:
        """`decode.tiling: auto`: on for a real checkpoint of a family whose VAE needs it (the tiny models never)."""
        return cls.tiled_by_default and not (path or "").startswith("builtin:")

    @classmethod
    def recommended(cls, path: str | None) -> dict:
        """Every sampling setting this model recommends, for those the job file leaves unset: the family's rules
        for the path, then what the checkpoint says it was trained for (a shipped builtin's settings, or the
        `rushes_recommended.json` of a local folder), which win."""
        base = cls.family_recommended(path)
        return {**base, **{k: v for k, v in trained_settings(path).items() if k in base}}

    @classmethod
    def family_recommended(cls, path: str | None) -> dict:
        """The family's own recommendation for `path` (its kind of checkpoint, a builtin's tiny settings)."""
        if path and path.startswith("builtin:"):
            return {**TINY, **cls.tiny_overrides(path)}
        return {**TINY, **cls.RECOMMENDED}  # TINY's optional settings (guidance_scale_2, ...) are None

    @classmethod
    def tiny_overrides(cls, path: str) -> dict:
        return {}

    @classmethod
    def check_settings(cls, settings: dict, path: str | None = None) -> str | None:
        """None when the family can use these settings, else a message naming the setting."""
        if settings.get("guidance_scale_2") is not None and not cls.has_second_expert(path):
            return "guidance_scale_2: only a two-expert model (Wan2.2 A14B) has a second guidance scale"
        if settings.get("flow_shift") is not None and not cls.shifted:
            return f"flow_shift: family '{cls.name}' has no flow shift to set (its scheduler is not shifted)"
        if settings.get("true_cfg_scale") is not None and not cls.guidance_distilled:
            return (f"true_cfg_scale: family '{cls.name}' already runs classifier-free guidance with guidance_scale "
                    "(true_cfg_scale is for a guidance-distilled model: hunyuan)")
        return None

    @classmethod
    def has_second_expert(cls, path: str | None) -> bool:
        return False

    @classmethod
    def spatial_multiple_of(cls, path: str | None) -> int:
        return cls.spatial_multiple

    @classmethod
    def check_shape(cls, height: int, width: int, num_frames: int, path: str | None = None) -> str | None:
        """None when the model at `path` can make this shape, else a message naming the field and the rule."""
        m = cls.spatial_multiple_of(path)
        if height % m:
            return f"height must be a multiple of {m} for family '{cls.name}', got {height}"
        if width % m:
            return f"width must be a multiple of {m} for family '{cls.name}', got {width}"
        if (num_frames - 1) % cls.temporal_stride:
            return (f"num_frames must be {cls.temporal_stride}*k+1 (e.g. {cls.frame_examples}) for family "
                    f"'{cls.name}', got {num_frames}")
        return None

    @classmethod
    def window_frames(cls, path: str | None) -> int | None:
        """The most frames one window of this model makes, or None when the family has no known window."""
        return cls.window

    @classmethod
    def check_length(cls, row: dict, path: str | None) -> str | None:
        """None when the family can make this row's length with these settings, else the message. A family
        that does not extend refuses storyboards, long-video settings and rows longer than its window."""
        if row.get("shots"):
            return (f"shots: family '{cls.name}' cannot continue one shot from another; storyboards need a "
                    "family that extends (model.family: skyreels_df)")
        given = [k for k in LONG_SETTINGS if row.get(k) is not None]
        if given:
            return (f"{given[0]}: a long-video setting, but family '{cls.name}' does not extend videos "
                    "(use model.family: skyreels_df)")
        window = cls.window_frames(path)
        if window is not None and row["num_frames"] > window:
            return (f"num_frames: {row['num_frames']} frames is longer than family '{cls.name}''s window of "
                    f"{window} frames, and family '{cls.name}' cannot extend a video; make at most {window} "
                    "frames, or use a family that extends (model.family: skyreels_df)")
        return None

    @classmethod
    def negative_pass(cls, params: SamplingParams) -> bool:
        """Whether the denoiser also runs on the negative prompt (classifier-free guidance: twice the work)."""
        return params.guidance_scale > 1.0

    @classmethod
    def checkpoint_class(cls, path: str | None) -> str:
        """The pipeline class of the checkpoint at `path`: the one its model_index.json (or a builtin's recipe)
        declares, when it is here and this family runs it; else the one its name suggests (`class_by_name`)."""
        key = (cls.__name__, path)
        if key not in _CLASS:
            declared = pipeline_class_of(path) if path else None
            _CLASS[key] = declared if declared in cls.pipeline_classes else cls.class_by_name(path or "")
        return _CLASS[key]

    @classmethod
    def class_by_name(cls, path: str) -> str:
        """The pipeline class a checkpoint that is not here to read is taken to be, from its name."""
        return cls.pipeline_class

    @classmethod
    def conditionings(cls, path: str | None) -> frozenset[str]:
        """The conditioning inputs (the manifest columns image, last_image, video) the checkpoint at `path`
        takes; none for a text-to-video family."""
        return frozenset()

    @classmethod
    def required_conditionings(cls, path: str | None) -> frozenset[str]:
        """The inputs every row of this checkpoint must give (an image-to-video checkpoint needs its image)."""
        return frozenset()

    @classmethod
    def video_tail(cls, row: dict, path: str | None) -> int | None:
        """How many of a clip's last frames (`video`) this row continues from; None: all of them."""
        return None

    @classmethod
    def check_conditioning(cls, row: dict, path: str | None) -> str | None:
        """None when the row's clip is long enough (`video_frames`, counted while planning), else the message."""
        frames, tail = row.get("video_frames"), cls.video_tail(row, path)
        if row.get("video") and frames is not None and tail is not None and frames < tail:
            return (f"video: {row['video']}: the clip has {frames} frames; family '{cls.name}' continues from its "
                    f"last {tail} with these settings and needs at least that many")
        return None

    @classmethod
    def free_to_sample(cls, model) -> bool:
        """Whether sampling costs nothing (no model runs, no GPU time is simulated): then no sampler waits on
        another, and rows can travel many to a block."""
        return False

    @classmethod
    def check_row(cls, row: dict, path: str | None) -> str | None:
        """Every rule above on a row (or the job's defaults) with its settings resolved."""
        return (cls.check_shape(row["height"], row["width"], row["num_frames"], path=path)
                or cls.check_settings(row, path=path) or cls.check_length(row, path)
                or cls.check_conditioning(row, path))


class DiffusersFamily(FamilyRules):
    """A family over diffusers pipeline classes: the text-to-video one, and the conditioned ones (an image or a
    clip) that its checkpoints declare or that its components also run. Subclasses set the class attributes and
    override `encode_one`, `latents_out` and `decode_video` where their layout differs, and `conditioned_class`
    and `condition_kwargs` for what their conditioned pipelines take."""

    vae_class: ClassVar[str]

    # -- sampling ---------------------------------------------------------------------------------------
    @classmethod
    def load_pipeline(cls, path: str, device: str, model, speed: SpeedOptions | None = None,
                      batch_invariant: bool = True):
        """The pipeline of the checkpoint at local `path` (the job's `model`: dtype, revision, LoRAs) without its
        VAE, on `device`, with the speed options (stages/models/speed.py) applied."""
        import diffusers

        quiet_loading()
        # The VAE is loaded by the decode stage; the sampler loads it only for a conditioned row (`ensure_vae`).
        pipe = getattr(diffusers, cls.checkpoint_class(path)).from_pretrained(
            path, vae=None, torch_dtype=torch_dtype(model.dtype_on(device)), revision=model.revision,
            **from_pretrained_kwargs(speed, cls.transformers, path, model.revision, device))
        pipe._rushes_source = (path, model.revision, model.dtype_on(device), device)
        cls.after_load(pipe, path, model.revision)
        if model.loras:
            load_loras(pipe, model.loras, cls.transformers)
        if apply_at_load(pipe, speed, cls.transformers, device):
            pipe.to(device)
        offload_text_encoders(pipe, speed, device)
        pipe.set_progress_bar_config(disable=True)
        if batch_invariant:
            for name in cls.transformers:
                if getattr(pipe, name, None) is not None:
                    _split_batch_forward(getattr(pipe, name))
        compile_blocks(pipe, speed, cls.transformers)
        return pipe

    @classmethod
    def after_load(cls, pipe, path: str, revision: str | None) -> None:
        """Fix-ups a pipeline loaded without its VAE needs (its VAE-derived factors)."""

    @classmethod
    def tokenizer(cls, pipe):
        """The tokenizer whose tokens `max_sequence_length` counts (the first text encoder's)."""
        return pipe.tokenizer

    @classmethod
    def encode_one(cls, pipe, prompt: str, negative: str, cfg: bool, device) -> dict:
        """One prompt's embeddings as keyword arguments of the pipeline call (batch of one)."""
        pos, neg = pipe.encode_prompt(prompt=[prompt], negative_prompt=[negative], do_classifier_free_guidance=cfg,
                                      max_sequence_length=cls.max_sequence_length, device=device)
        return {"prompt_embeds": pos, "negative_prompt_embeds": neg if cfg else None}

    @classmethod
    def call_kwargs(cls, pipe, params: SamplingParams) -> dict:
        """Family-specific arguments of the pipeline call, from the variant's settings."""
        return {}

    @classmethod
    def set_flow_shift(cls, pipe, flow_shift: float | None) -> None:
        """The scheduler with this shift, or with the checkpoint's own config when None (every call sets it, so
        one variant's shift never carries over to the next)."""
        if not cls.shifted:
            return
        if not hasattr(pipe, "_rushes_scheduler_config"):
            pipe._rushes_scheduler_config = dict(pipe.scheduler.config)
        config = dict(pipe._rushes_scheduler_config)
        if flow_shift is not None:  # UniPC (Wan's and SkyReels' checkpoints) calls it flow_shift, FlowMatchEuler shift
            config["flow_shift" if "flow_shift" in config else "shift"] = flow_shift
        if dict(pipe.scheduler.config) != config:
            pipe.scheduler = type(pipe.scheduler).from_config(config)

    @classmethod
    def latents_out(cls, pipe, latents, params: SamplingParams):
        """The pipeline's latents as this family keeps them between sample and decode."""
        return latents

    @classmethod
    def sample(cls, pipe, inputs: list[VariantInput], params: SamplingParams) -> np.ndarray:
        """Latents for a batch of same-shape variants, float32, one per input (layout: the family's own). Text-only
        variants share one pipeline call; a conditioned one gets its own call of the pipeline that takes its
        image or clip (the pipelines encode a batch's images together, which would tie its pixels to its
        batch-mates)."""
        import torch

        # diffusers runs only the pipeline's __call__ without autograd: encode_prompt called on its own would keep
        # the text encoder's whole activation graph alive through denoising (GBs for umT5 at 512 tokens).
        with torch.no_grad():  # as the pipeline's own __call__ (inference_mode picks other kernels)
            plain = [v for v in inputs if not v.conditioned]
            latents = iter(cls.call(pipe, plain, params, {}) if plain else [])
            out = []
            for v in inputs:
                if not v.conditioned:
                    out.append(next(latents))
                    continue
                conditioned = cls.conditioned_pipeline(pipe, v)
                pipe._rushes_active = conditioned  # whose timestep a cache hook follows (stages/models/speed.py)
                try:
                    out.append(cls.call(conditioned, [v], params, cls.condition_kwargs(conditioned, v, params))[0])
                finally:
                    pipe._rushes_active = pipe
            return np.stack(out)

    @classmethod
    def call(cls, pipe, inputs: list[VariantInput], params: SamplingParams, extra: dict) -> np.ndarray:
        """One pipeline call to latents for these variants, with `extra` arguments (a conditioned call's image)."""
        import torch

        device = pipe._execution_device
        # Prompts are encoded one at a time for the same reason the denoiser runs per item.
        cfg = cls.negative_pass(params)
        encoded = [cls.encode_one(pipe, v.prompt, v.negative_prompt, cfg, device) for v in inputs]
        embeds = {k: _cat([e[k] for e in encoded]) for k in encoded[0]}
        generators = [torch.Generator(device="cpu").manual_seed(v.seed) for v in inputs]
        cls.set_flow_shift(pipe, params.flow_shift)
        out = pipe(**embeds, height=params.height, width=params.width, num_frames=params.num_frames,
                   num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
                   generator=generators, output_type="latent", **cls.call_kwargs(pipe, params), **extra)
        z = cls.latents_out(pipe, out.frames, params)
        return z.float().cpu().numpy()

    # -- conditioned rows --------------------------------------------------------------------------------
    @classmethod
    def conditioned_class(cls, pipe, v: VariantInput) -> str:
        """The diffusers pipeline class that takes this variant's image or clip: the loaded one by default."""
        return type(pipe).__name__

    @classmethod
    def condition_kwargs(cls, pipe, v: VariantInput, params: SamplingParams) -> dict:
        """The conditioning arguments of that pipeline's call (`pipe` is the conditioned pipeline)."""
        kwargs = {"image": v.image}
        if v.last_image is not None:
            kwargs["last_image"] = v.last_image
        return kwargs

    @classmethod
    def conditioned_pipeline(cls, pipe, v: VariantInput):
        """The pipeline that takes this variant's conditioning, built once over `pipe`'s own components (sharing
        its weights, its batch-invariant forwards and speed options) once the VAE is loaded: a pipeline derives its
        VAE factors when it is made, which a pipeline loaded without its VAE got from defaults. Its class is the
        checkpoint's own, or another that the same components run (Wan2.2 TI2V-5B's image-to-video, LTX's)."""
        cls.ensure_vae(pipe)
        name = cls.conditioned_class(pipe, v)
        built = pipe.__dict__.setdefault("_rushes_conditioned", {})
        if name not in built:
            import diffusers

            target = getattr(diffusers, name)
            accepted = inspect.signature(target.__init__).parameters
            parts = {k: m for k, m in pipe.components.items() if k in accepted}
            parts.update({k: pipe.config[k] for k in accepted if k in pipe.config and k not in parts})
            built[name] = target(**parts)
            built[name].set_progress_bar_config(disable=True)
            built[name]._rushes_source = pipe._rushes_source
        return built[name]

    @classmethod
    def ensure_vae(cls, pipe):
        """The sampler's VAE, loaded on the first conditioned row: the pipeline encodes the image or clip with it."""
        if getattr(pipe, "vae", None) is None:
            path, revision, dtype, device = pipe._rushes_source
            pipe.register_modules(vae=cls.load_vae(path, dtype, device, revision))
        return pipe.vae

    # -- decoding ---------------------------------------------------------------------------------------
    @classmethod
    def load_vae(cls, path: str, dtype: str, device: str, revision: str | None = None, model=None):
        import diffusers

        quiet_loading()
        vae = getattr(diffusers, cls.vae_class).from_pretrained(
            path, subfolder="vae", torch_dtype=torch_dtype(cls.vae_dtype_for(dtype)), revision=revision)
        return vae.to(device).eval()

    @classmethod
    def decode(cls, vae, latents: np.ndarray, seed: int = 0) -> tuple[np.ndarray, bool]:
        """One variant's latents to frames uint8 (T, H, W, 3), and whether all were finite."""
        import torch

        with torch.no_grad():
            p = next(vae.parameters())
            z = torch.from_numpy(latents).unsqueeze(0).to(p.device, torch.float32)
            video = cls.decode_video(vae, z, seed)  # (1, 3, T, H, W) in [-1, 1]
            return video_to_frames(video[0])

    @classmethod
    def decode_video(cls, vae, z, seed: int):
        """Batch-of-one latents (float32, on the VAE's device) to the VAE's video output."""
        raise NotImplementedError

    @classmethod
    def decode_chunks(cls, vae, latents: np.ndarray):
        """uint8 frames of a long video's latents, a few at a time, with whether each part was finite: only a
        causal VAE that decodes frame by frame can (Wan's); the others decode a window whole."""
        raise ValueError(f"streamed decoding needs Wan's causal VAE; family '{cls.name}' has {cls.vae_class}")
