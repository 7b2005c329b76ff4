"""GPU memory and compute plan of a video diffusion checkpoint, from its config files alone.

In: a checkpoint folder in diffusers layout (model_index.json and each component's config.json; weights are never
loaded), a shape (height, width, num_frames, batch), dtypes, a GPU name from GPUS. Out: parameter counts and bytes,
activation peaks, FLOPs, and `fits()`: whether a sampler process (denoisers + text encoders) and a decoder process
(VAE) fit that GPU, and which of text-encoder offload, VAE tiling, fp8 weights, one resident expert make them fit.
Imports torch, diffusers and transformers only. How the numbers are made:
- parameters: unique parameters of the component built on the meta device from its config (class from
  model_index.json), or the shapes in its safetensors headers where weights exist (`header_params`). Bytes:
  params x dtype size, except modules the class keeps in float32 (diffusers `_keep_in_fp32_modules`; transformers'
  in float16, its `_strict` ones in bfloat16 too), and with fp8 storage Linear/Conv weights outside
  `_skip_layerwise_casting_patterns` at 1 byte (what `enable_layerwise_casting` stores).
- activation peaks (denoiser forward, VAE decode): the model's own eager code runs on the meta device at the real
  shape under LiveBytes, which adds up the bytes of the tensors alive at once (residual stream, Q/K/V, FFN
  intermediates, float32/float64 upcasts, causal caches, tiles: what the code holds). Attention is a flash-like
  stand-in that allocates only its output (flash/efficient/cuDNN SDPA never materialise N x N); a mask the code
  builds itself (HunyuanVideo's VAE causal mask) is counted. Plans use traced x SLACK (1.15: allocator
  fragmentation, kernel workspaces) + CONTEXT (1 GiB a process: CUDA context, cuBLAS/cuDNN). A transformer class
  without an input builder falls back to the formula batch x tokens x (24 d + 4 ffn) x act_bytes / 2 (+ 48 d bytes
  a token with per-token timesteps), which bounds the traced peaks of the built-in families (tests check it).
- text encoder activations: batch x (L (8 d + 3 ffn) act_bytes + 3 heads L^2 x 4 bytes), L its padded length
  (eager attention scores, position bias and softmax in float32).
- FLOPs of a transformer forward: 2 x sum over Linear layers of weights x the tokens it sees, + 4 Sq Skv d per
  attention layer; video tokens = latent frames x h x w / patch volume. Which tokens a Linear sees comes from its
  name (RULES): video, text (padded: Wan 512, LTX 128, CogVideoX 226, HunyuanVideo 256), image (257 CLIP tokens),
  joint (video + text) or cond/time (1 a sample; a token each with Wan2.2 TI2V's expand_timesteps). A variant:
  steps x forwards a step (2 with CFG, 1 guidance-distilled) x forward. VAE decode FLOPs (count_flops=True):
  torch's FlopCounterMode over the traced run, + 4 Sq Skv d per attention call (tests check formula = traced).
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import struct
import weakref
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from stages.models.gpus import GPU_TABLE

GiB = 2 ** 30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1}
SLACK, CONTEXT = 1.15, 1.0 * GiB
GPUS = GPU_TABLE
TEXT_TOKENS = {"Wan": 512, "SkyReels": 512, "LTX": 128, "CogVideoX": 226, "HunyuanVideo": 256}
RULES = {  # (regex on the Linear's name, which tokens it sees); unmatched: video
    "Wan": [(r"attn2\.(to_k|to_v)$|^condition_embedder\.text", "text"), (r"add_[kv]_proj$|image_embedder", "image"),
            (r"^condition_embedder\.time|^fps_projection", "time")],
    "LTX": [(r"attn2\.(to_k|to_v)$|^caption_projection", "text"), (r"^time_embed", "cond")],
    "CogVideoX": [(r"norm\d\.linear$|^time_embedding|^norm_out", "cond"), (r"text_proj$", "text"),
                  (r"^transformer_blocks", "joint")],
    "HunyuanVideo": [(r"norm1(_context)?\.linear$|norm\.linear$|^norm_out|^time_text_embed", "cond"),
                     (r"^context_embedder|add_[qkv]_proj$|to_add_out$|ff_context", "text"),
                     (r"^single_transformer_blocks", "joint")]}


def family(cls_name: str) -> str:
    for key in ("SkyReels", "Wan", "LTX", "CogVideoX", "HunyuanVideo"):
        if key in cls_name:
            return "Wan" if key == "SkyReels" else key
    return cls_name


def index(folder) -> dict:
    return json.loads((Path(folder) / "model_index.json").read_text())


def components(folder) -> dict[str, tuple[str, str]]:
    """Model components (name -> (library, class)); tokenizers, schedulers and processors left out."""
    skip = ("tokenizer", "scheduler", "processor", "feature_extractor")
    return {k: tuple(v) for k, v in index(folder).items()
            if isinstance(v, list) and v[0] in ("diffusers", "transformers")
            and not any(s in k for s in skip)}


def build(folder, name: str, dtype: str = "float32") -> torch.nn.Module:
    """The component on the meta device, from its config (no weights)."""
    lib, cls_name = components(folder)[name]
    path = Path(folder) / name
    with torch.device("meta"):
        if lib == "diffusers":
            cls = getattr(diffusers, cls_name)
            model = cls.from_config(cls.load_config(path))
        else:
            model = getattr(transformers, cls_name)._from_config(transformers.AutoConfig.from_pretrained(path))
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # `.to(dtype)` warns of the float32 modules it keeps: counted above
    try:
        return model.to(getattr(torch, dtype)).eval()
    finally:
        diffusers.utils.logging.set_verbosity(level)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates


def header_params(folder, name: str) -> int | None:
    """Parameters in the component's safetensors headers, when weights are there (nothing else is read)."""
    total, files = 0, sorted((Path(folder) / name).glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total if files else None


def weight_bytes(model: torch.nn.Module, dtype: str, fp8: bool = False) -> int:
    """Bytes of the component's weights loaded in `dtype` (see the module docstring for float32 and fp8 rules)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    if hasattr(model, "_keep_in_fp32_modules_strict"):  # a transformers model
        keep = (keep if dtype == "float16" else set()) | (set(model._keep_in_fp32_modules_strict or [])
                                                          if dtype != "float32" else set())
    skip = tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ()) + tuple(keep)
    total, seen = 0, set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                size = 4 if any(k in f"{mname}.{pname}".split(".") for k in keep) else BYTES[dtype]
                cast = fp8 and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))
                total += p.numel() * (1 if cast and not any(re.search(s, mname) for s in skip) else size)
    return total


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors alive at once while eager code runs (meta tensors: shapes only, nothing computed)."""

    def __init__(self, *modules: torch.nn.Module):
        super().__init__()
        self.live = self.peak = 0
        self.refs, self.tracked = {}, set()
        # storages that exist before the run (weights, buffers): views of them (a Linear's weight.t()) are not new
        self.external = {t.untyped_storage()._cdata for m in modules for t in (*m.parameters(), *m.buffers())}

    def _drop(self, tid, key, nbytes):
        self.tracked.discard(tid)
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self.tracked:
                storage = t.untyped_storage()
                key, nbytes = storage._cdata, storage.nbytes()
                if key in self.external:
                    continue
                self.tracked.add(id(t))
                if key not in self.refs:
                    self.refs[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self.refs[key] += 1
                weakref.finalize(t, self._drop, id(t), key, nbytes)
        return out


@contextlib.contextmanager
def traced(*modules: torch.nn.Module, count_flops: bool = True):
    """Run eager code on meta tensors; yields {'peak': bytes, 'flops': FLOPs or None} filled in on exit. Counting
    FLOPs runs every op through FlopCounterMode too: ~4x slower on op-heavy code (a tiled VAE decode)."""
    from torch.utils.flop_counter import FlopCounterMode

    result, attention = {}, [0]
    original = F.scaled_dot_product_attention

    def flash_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        attention[0] += 4 * query.shape[:-1].numel() * key.shape[-2] * query.shape[-1]
        return query.new_empty(query.shape[:-1] + (value.shape[-1],))

    F.scaled_dot_product_attention = flash_like
    live, flops = LiveBytes(*modules), FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
    try:
        with torch.inference_mode(), flops, live:
            yield result
    finally:
        F.scaled_dot_product_attention = original
        result.update(peak=live.peak, flops=flops.get_total_flops() + attention[0] if count_flops else None)


def vae_factors(vae) -> tuple[int, int]:
    own, cfg = vars(vae), vae.config  # attributes __init__ set (getattr falls back to the config, with a warning)
    spatial = own.get("spatial_compression_ratio") or 2 ** (len(cfg["block_out_channels"]) - 1)
    temporal = own.get("temporal_compression_ratio") or cfg.get("temporal_compression_ratio") or \
        cfg.get("scale_factor_temporal", 4)
    return int(spatial), int(temporal)


def geometry(folder, height: int, width: int, num_frames: int, name: str = "transformer") -> dict:
    """Latent (frames, h, w) and the denoiser's video tokens (CogVideoX 1.5's frames padded to its temporal patch)."""
    vae, cfg = build(folder, "vae"), build(folder, name).config
    s, t = vae_factors(vae)
    frames, h, w = (num_frames - 1) // t + 1, height // s, width // s
    patch = cfg.get("patch_size")
    pt, ph = (patch[0], patch[-1]) if isinstance(patch, (list, tuple)) else (cfg.get("patch_size_t") or 1, patch)
    padded = -(-frames // pt) * pt
    return dict(frames=frames, h=h, w=w, padded_frames=padded, tokens=padded // pt * (h // ph) * (w // ph))


def _dims(cfg) -> tuple[int, int]:
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return d, cfg.get("ffn_dim") or int(d * cfg.get("mlp_ratio", 4.0))


def transformer_flops(folder, height: int, width: int, num_frames: int, batch: int = 1,
                      name: str = "transformer") -> float:
    """FLOPs of one forward (formula in the module docstring)."""
    model = build(folder, name)
    cfg, fam = model.config, family(type(model).__name__)
    g = geometry(folder, height, width, num_frames, name)
    n, lt, d = g["tokens"], TEXT_TOKENS.get(fam, 0), _dims(cfg)[0]
    tokens = dict(video=n, text=lt, image=257, joint=n + lt, cond=1,
                  time=n if index(folder).get("expand_timesteps") else 1)
    linear = sum(2 * m.weight.numel() * tokens[next((k for p, k in RULES.get(fam, []) if re.search(p, name)), "video")]
                 for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    layers = cfg["num_layers"] + cfg.get("num_single_layers", 0)
    if fam in ("CogVideoX", "HunyuanVideo"):
        attention = layers * 4 * (n + lt) ** 2 * d + cfg.get("num_refiner_layers", 0) * 4 * lt * lt * d
    else:
        image = 257 if cfg.get("added_kv_proj_dim") else 0
        attention = layers * 4 * n * (n + lt + image) * d
    return float(batch * (linear + attention))


def variant_flops(folder, height: int, width: int, num_frames: int, steps: int, cfg: bool = True,
                  batch: int = 1) -> float:
    """FLOPs of one variant's denoising: steps x (2 with CFG, else 1) x forward (an A14B expert costs the same)."""
    return steps * (2 if cfg else 1) * transformer_flops(folder, height, width, num_frames, batch)


def _inputs(model, g: dict, batch: int, expand_timesteps: bool) -> dict | None:
    cfg, fam, dt = model.config, family(type(model).__name__), model.dtype
    m = dict(device="meta", dtype=dt)
    lt, long = TEXT_TOKENS.get(fam, 0), dict(device="meta", dtype=torch.long)
    frames, h, w = g["padded_frames"], g["h"], g["w"]
    if fam == "Wan":
        ts = torch.empty(batch, g["tokens"], **long) if expand_timesteps else torch.empty(batch, **long)
        out = dict(hidden_states=torch.empty(batch, cfg["in_channels"], frames, h, w, **m), timestep=ts,
                   encoder_hidden_states=torch.empty(batch, lt, cfg["text_dim"], **m))
        if cfg.get("image_dim"):
            out["encoder_hidden_states_image"] = torch.empty(batch, 257, cfg["image_dim"], **m)
        if cfg.get("inject_sample_info"):  # SkyReels-V2 DF-1.3B: an fps embedding
            out["fps"] = [1] * batch  # as the pipeline passes it (0: 16 fps, 1: 24 fps)
        return out
    if fam == "LTX":
        return dict(hidden_states=torch.empty(batch, frames * h * w, cfg["in_channels"], **m),
                    encoder_hidden_states=torch.empty(batch, lt, cfg["caption_channels"], **m),
                    timestep=torch.empty(batch, 1, **m), encoder_attention_mask=torch.empty(batch, lt, **m),
                    num_frames=frames, height=h, width=w, rope_interpolation_scale=(1.0, 1.0, 1.0))
    if fam == "CogVideoX":
        rope = torch.empty(g["tokens"], cfg["attention_head_dim"], device="meta")
        return dict(hidden_states=torch.empty(batch, frames, cfg["in_channels"], h, w, **m),
                    encoder_hidden_states=torch.empty(batch, lt, cfg["text_embed_dim"], **m),
                    timestep=torch.empty(batch, **long),
                    image_rotary_emb=(rope, rope) if cfg["use_rotary_positional_embeddings"] else None)
    if fam == "HunyuanVideo":
        return dict(hidden_states=torch.empty(batch, cfg["in_channels"], frames, h, w, **m), timestep=torch.empty(
                    batch, **long), encoder_hidden_states=torch.empty(batch, lt, cfg["text_embed_dim"], **m),
                    encoder_attention_mask=torch.empty(batch, lt, **m),
                    pooled_projections=torch.empty(batch, cfg["pooled_projection_dim"], **m),
                    guidance=torch.empty(batch, **m) if cfg.get("guidance_embeds") else None)
    return None


def formula_activation_bytes(d: int, ffn: int, tokens: int, batch: int, dtype: str, per_token_time=False) -> int:
    return batch * tokens * ((24 * d + 4 * ffn) * BYTES[dtype] // 2 + (48 * d if per_token_time else 0))


def denoiser_activation_bytes(folder, height: int, width: int, num_frames: int, batch: int = 1,
                              dtype: str = "bfloat16", name: str = "transformer") -> dict:
    """Peak bytes of one forward's activations (traced; formula when no input builder), and the traced FLOPs."""
    model = build(folder, name, dtype)
    g = geometry(folder, height, width, num_frames, name)
    expand = bool(index(folder).get("expand_timesteps"))
    inputs = _inputs(model, g, batch, expand)
    d, ffn = _dims(model.config)
    formula = formula_activation_bytes(d, ffn, g["tokens"], batch, dtype, expand)
    if inputs is None:
        return dict(peak=formula, formula=formula, flops=None)
    with traced(model) as t:
        model(**inputs, return_dict=False)
    return dict(peak=t["peak"], formula=formula, flops=t["flops"])


def vae_decode(folder, height: int, width: int, num_frames: int, dtype: str = "float32", tiled: bool = False,
               count_flops: bool = False) -> dict:
    """Peak activation bytes (and FLOPs if asked) of decoding one video, whole or with the class's default
    `enable_tiling()` (which the decode honours when called on the VAE directly)."""
    vae = build(folder, "vae", dtype)
    if tiled:
        vae.enable_tiling()
    s, t = vae_factors(vae)
    c = vae.config.get("z_dim") or vae.config.get("latent_channels")
    z = torch.empty(1, c, (num_frames - 1) // t + 1, height // s, width // s, device="meta", dtype=vae.dtype)
    kw = {"temb": torch.empty(1, device="meta", dtype=vae.dtype)} if vae.config.get("timestep_conditioning") else {}
    with traced(vae, count_flops=count_flops) as tr:
        vae.decode(z, return_dict=False, **kw)
    return dict(peak=tr["peak"], flops=tr["flops"])


def text_encoder_activation_bytes(model, seq_len: int, batch: int, dtype: str) -> int:
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    d = getattr(c, "d_model", None) or c.hidden_size
    ffn = getattr(c, "d_ff", None) or c.intermediate_size
    heads = getattr(c, "num_heads", None) or c.num_attention_heads
    return batch * (seq_len * (8 * d + 3 * ffn) * BYTES[dtype] + 3 * heads * seq_len ** 2 * 4)


def _need(weights: int, activations: int) -> float:
    return (weights + activations * SLACK + CONTEXT) / GiB


def fits(folder, gpu: str, shape: tuple[int, int, int], dtype: str = "bfloat16", vae_dtype: str | None = None,
         batch: int = 1, headroom: float = 0.10, share_gpu: bool = False) -> dict:
    """Whether the sampler process (denoisers + text/image encoders resident) and the decoder process (VAE) fit `gpu`
    with `headroom` left, and the GiB each option set needs: offload_text_encoder (encoders leave the GPU after
    encoding, model_cpu_offload-like: peak = the larger of encoders + theirs and denoisers + theirs), one_expert
    (Wan2.2 A14B keeps one expert on the GPU at a time), fp8 (denoisers' Linear/Conv weights in float8_e4m3fn) and,
    for the decoder, tiling (the VAE class's default `enable_tiling()`). `batch`: the denoiser's forward batch (1 with
    Rushes' per-item forward; 2 for a pipeline batching CFG). `share_gpu`: both processes on one GPU, the decoder
    getting what the sampler (with its fix) leaves. `fix`: the first option set that fits, least intrusive first
    (only fp8 and tiling change pixels); None when nothing is needed, `fits_at_all` False when nothing helps."""
    import itertools

    height, width, num_frames = shape
    budget = GPUS[gpu][0] * (1 - headroom)
    comps = components(folder)
    fam = family(comps["transformer"][1])
    denoisers = [n for n in ("transformer", "transformer_2") if n in comps]
    encoders = [n for n in comps if n.startswith(("text_encoder", "image_encoder"))]
    models = {n: build(folder, n, dtype) for n in denoisers + encoders}
    den = {n: weight_bytes(models[n], dtype) for n in denoisers}
    den8 = {n: weight_bytes(models[n], dtype, fp8=True) for n in denoisers}
    act = denoiser_activation_bytes(folder, height, width, num_frames, batch, dtype)["peak"]
    enc_w = sum(weight_bytes(models[n], dtype) for n in encoders)
    seq = {"image_encoder": 257, "text_encoder_2": 77,  # CLIP; HunyuanVideo's Llama: 256 + its prompt template (95)
           "text_encoder": TEXT_TOKENS.get(fam, 512) + (95 if fam == "HunyuanVideo" else 0)}
    enc_act = max([text_encoder_activation_bytes(models[n], seq[n], 1, dtype) for n in encoders] or [0])
    options = ["offload_text_encoder"] + (["one_expert"] if len(denoisers) > 1 else []) + ["fp8"]
    sampler = {}
    for combo in (c for r in range(len(options) + 1) for c in itertools.combinations(options, r)):
        weights = den8 if "fp8" in combo else den
        dw = max(weights.values()) if "one_expert" in combo else sum(weights.values())
        sampler["+".join(combo) or "none"] = round(max(_need(enc_w, enc_act), _need(dw, act)) if "offload_text_encoder"
                                                   in combo else _need(dw + enc_w, max(act, enc_act)), 2)
    vae_dtype = vae_dtype or ("float32" if fam == "Wan" else dtype)
    vae_w = weight_bytes(build(folder, "vae", vae_dtype), vae_dtype)

    def decode_need(tiled: bool) -> float:
        return round(_need(vae_w, vae_decode(folder, height, width, num_frames, vae_dtype, tiled)["peak"]), 2)

    def verdict(needs: dict, room: float) -> dict:
        fix = next((k for k, v in needs.items() if v <= room), None)
        return dict(needs_gib=needs, fits=needs["none"] <= room, fits_at_all=fix is not None,
                    fix=None if fix in (None, "none") else fix.split("+"))

    s = verdict(sampler, budget)
    room = budget - (sampler["+".join(s["fix"] or []) or "none"] if share_gpu else 0)
    decoder = {"none": decode_need(False)}
    if decoder["none"] > room:  # the tiled trace is slow (every tile is run), so only when it is needed
        decoder["tiling"] = decode_need(True)
    return dict(gpu=gpu, budget_gib=round(budget, 2), sampler=s, decoder=verdict(decoder, room))
