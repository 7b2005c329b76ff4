"""GPU figures: the sampler's speed and model FLOPs utilization on a real-size architecture, and how busy
the GPU stays during a short full `rushes run`. Needs a CUDA GPU; elsewhere it prints the FLOP model
and exits with a message.

    python bench/gpu.py [--family wan] [--steps 5] [--warmup 2] [--rows 6] [--pipeline-steps 4] [--skip-pipeline]

`--family ltx | cogvideox | hunyuan | skyreels` times that family's real-size transformer instead (see
FAMILY_MODELS: LTX-Video 2B at 480x704x161, CogVideoX-5b at 480x720x49, HunyuanVideo 13B at 544x960x129,
SkyReels-V2 1.3B at 544x960x97; random weights, bf16). Its model FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` over one forward on the meta device (matmuls, convolutions and
attention), so they print on any machine; the full-pipeline run (part 4) is Wan's only.

1. Sampler: `WanTransformer3DModel` built from the Wan2.1-T2V-1.3B config (random weights, bf16) on a
   480x832, 81-frame latent (1, 16, 21, 60, 104) with 512 text tokens of width 4096. Each denoising
   forward is timed with CUDA events after warm-up; a CFG step is two forwards.
2. Peak: the best of large bf16 `torch.matmul`s (8192 and 16384 square), timed the same way; this is the
   roof MFU is measured against (a measured peak, not the datasheet's).
3. MFU = model FLOPs per forward / seconds per forward / measured peak. Model FLOPs (multiply-adds
   count 2):
       2 * P_video * S          linear layers applied to every video token (self-attention q,k,v,o;
                                cross-attention q,o; FFN; patch embedding; output projection)
     + 2 * P_text * 512         linear layers applied to text tokens (text embedder, cross-attn k,v)
     + 4 * L * S^2 * D          self-attention scores and weighted sum (QK^T and AV, 2*S^2*D each)
     + 4 * L * S * 512 * D      cross-attention
   with S = 21 * 30 * 52 = 32760 video tokens (latent 21x60x104, patch 1x2x2), L = 30 layers, D = 1536.
   The plain 2 * params * S + 4 * L * S^2 * D is printed beside it (it charges text-only weights to
   every video token, so it reads about 3% higher).
4. Full pipeline: a diffusers folder with that transformer, the real-size Wan 2.1 VAE (random), a
   one-layer text encoder of width 4096 and the builtin tokenizer, run by `rushes run` on `--rows`
   rows at 480x832x81 (sample and decode actors each with half the GPU). `nvidia-smi` utilization
   (the share of time a kernel is running) is polled every 100 ms; the busy fraction is its mean over
   the whole run and over the steady window from the first commit to the last.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import torch

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers, transformer/config.json
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
HEIGHT, WIDTH, FRAMES, TEXT_TOKENS = 480, 832, 81, 512


def latent_shape() -> tuple[int, ...]:
    return (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)


def build_transformer(device: str, dtype: torch.dtype = torch.bfloat16):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**WAN_1_3B)
    if device == "meta":
        return model
    # As `from_pretrained(torch_dtype=bf16)` loads it: the modules the model keeps in float32 stay so.
    keep = set(model._keep_in_fp32_modules or ())
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model.eval()


def forward_flops(model, shape: tuple[int, ...], text_tokens: int = TEXT_TOKENS) -> tuple[float, float, dict]:
    """(model FLOPs per forward, the plain 2*params*S + attention figure, the parts) for a latent shape."""
    cfg = model.config
    pt, ph, pw = cfg.patch_size
    tokens = (shape[2] // pt) * (shape[3] // ph) * (shape[4] // pw)
    dim, layers = cfg.num_attention_heads * cfg.attention_head_dim, cfg.num_layers
    per_video = per_text = 0
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
            continue
        weights = module.weight.numel()
        if "text_embedder" in name or name.endswith(("attn2.to_k", "attn2.to_v")):
            per_text += weights
        elif "time_" not in name:  # time embedding: one token, negligible
            per_video += weights
    parts = {"linear (video tokens)": 2.0 * per_video * tokens, "linear (text tokens)": 2.0 * per_text * text_tokens,
             "self-attention": 4.0 * layers * tokens ** 2 * dim,
             "cross-attention": 4.0 * layers * tokens * text_tokens * dim}
    params = sum(p.numel() for p in model.parameters())
    plain = 2.0 * params * tokens + 4.0 * layers * tokens ** 2 * dim
    return sum(parts.values()), plain, {"tokens": tokens, "params": params, **parts}


def cuda_time(fn, iters: int) -> list[float]:
    """Seconds of each call of `fn`, measured with CUDA events."""
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return times


def matmul_peak() -> float:
    """Best bf16 matmul FLOP/s over a few large square sizes."""
    best = 0.0
    for n in (8192, 16384):
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        cuda_time(lambda: a @ b, 3)
        best = max(best, 2.0 * n ** 3 / min(cuda_time(lambda: a @ b, 20)))
        del a, b
    return best


class GpuBusy:
    """Polls `nvidia-smi` utilization (percent of time a kernel ran) every 100 ms, with timestamps."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = None

    def __enter__(self) -> "GpuBusy":
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "100"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait()

    def mean(self, start: float = 0.0, end: float = float("inf")) -> float | None:
        values = [u for t, u in self.samples if start <= t <= end]
        return sum(values) / len(values) / 100 if values else None


def fmt_busy(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None else "n/a (no nvidia-smi)"


def sampler(args):
    """Times the transformer's forward; returns the model (on the GPU) for the full-pipeline checkpoint."""
    model = build_transformer("cuda")
    total, plain, parts = forward_flops(model, latent_shape())
    gen = torch.Generator("cuda").manual_seed(0)
    latents = torch.randn(latent_shape(), device="cuda", dtype=torch.bfloat16, generator=gen)
    text = torch.randn(1, TEXT_TOKENS, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    timestep = torch.tensor([500], device="cuda")

    def forward():
        with torch.inference_mode():
            model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)

    cuda_time(forward, args.warmup)
    with GpuBusy() as busy:
        start = time.perf_counter()
        times = cuda_time(forward, args.steps)
        window = (start, time.perf_counter())
    peak = matmul_peak()
    per = sum(times) / len(times)
    print(f"sampler: Wan2.1 1.3B architecture ({parts['params'] / 1e9:.3f} B params, random weights, bf16), "
          f"latent {tuple(latent_shape())} = {parts['tokens']} tokens, {TEXT_TOKENS} text tokens")
    print(f"  {per:.3f} s per forward (min {min(times):.3f}, max {max(times):.3f}, {args.steps} timed after "
          f"{args.warmup} warm-up); {2 * per:.3f} s per CFG step; GPU busy {fmt_busy(busy.mean(*window))}")
    print(f"  model FLOPs per forward {total / 1e12:.1f} T (" + ", ".join(
        f"{k} {v / 1e12:.1f} T" for k, v in parts.items() if k not in ("tokens", "params"))
        + f"); plain 2*params*S + 4*L*S^2*D = {plain / 1e12:.1f} T")
    print(f"  achieved {total / per / 1e12:.0f} TFLOP/s; measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; "
          f"MFU {total / per / peak:.1%} (plain formula: {plain / per / peak:.1%})")
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return model


# Real-size transformers of the other families (their published transformer/config.json), and one forward's
# inputs at the family's recommended size: (class name, config, latent shape note, inputs(model, device)).
def _ltx_inputs(model, device):
    f, h, w = 21, 15, 22  # 161 frames, 480x704: the VAE compresses 8x in time and 32x in space
    return dict(hidden_states=torch.randn(1, f * h * w, 128, device=device, dtype=torch.bfloat16),
                encoder_hidden_states=torch.randn(1, 128, 4096, device=device, dtype=torch.bfloat16),
                timestep=torch.tensor([500.0], device=device), encoder_attention_mask=torch.ones(1, 128, device=device),
                num_frames=f, height=h, width=w, rope_interpolation_scale=(8 / 25, 32, 32))


def _cogvideox_inputs(model, device):
    from types import SimpleNamespace

    from diffusers import CogVideoXPipeline

    f, h, w = 13, 60, 90  # 49 frames, 480x720: 4x in time, 8x in space
    rotary = CogVideoXPipeline._prepare_rotary_positional_embeddings(
        SimpleNamespace(vae_scale_factor_spatial=8, transformer=model), h * 8, w * 8, f, device)
    return dict(hidden_states=torch.randn(1, f, 16, h, w, device=device, dtype=torch.bfloat16),
                encoder_hidden_states=torch.randn(1, 226, 4096, device=device, dtype=torch.bfloat16),
                timestep=torch.tensor([500], device=device), image_rotary_emb=rotary)


def _hunyuan_inputs(model, device):
    f, h, w = 33, 68, 120  # 129 frames, 544x960
    return dict(hidden_states=torch.randn(1, 16, f, h, w, device=device, dtype=torch.bfloat16),
                timestep=torch.tensor([500], device=device),
                encoder_hidden_states=torch.randn(1, 256, 4096, device=device, dtype=torch.bfloat16),
                encoder_attention_mask=torch.ones(1, 256, device=device),
                pooled_projections=torch.randn(1, 768, device=device, dtype=torch.bfloat16),
                guidance=torch.tensor([6000.0], device=device, dtype=torch.bfloat16))


def _skyreels_inputs(model, device):
    return dict(hidden_states=torch.randn(1, 16, 25, 68, 120, device=device, dtype=torch.bfloat16),  # 97 f, 544x960
                timestep=torch.tensor([500], device=device),
                encoder_hidden_states=torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16))


FAMILY_MODELS = {
    "ltx": ("LTXVideoTransformer3DModel", "LTX-Video 2B, 480x704x161",
            dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                 attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096),
            _ltx_inputs),
    "cogvideox": ("CogVideoXTransformer3DModel", "CogVideoX-5b, 480x720x49",
                  dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
                       time_embed_dim=512, text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60,
                       sample_frames=49, patch_size=2, use_rotary_positional_embeddings=True), _cogvideox_inputs),
    "hunyuan": ("HunyuanVideoTransformer3DModel", "HunyuanVideo 13B, 544x960x129",
                dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                     num_single_layers=40, num_refiner_layers=2, patch_size=2, patch_size_t=1, text_embed_dim=4096,
                     pooled_projection_dim=768, rope_axes_dim=(16, 56, 56), guidance_embeds=True), _hunyuan_inputs),
    "skyreels": ("SkyReelsV2Transformer3DModel", "SkyReels-V2 1.3B, 544x960x97", dict(WAN_1_3B), _skyreels_inputs),
}


def family_transformer(family: str, device: str):
    import diffusers

    cls, _, config, _ = FAMILY_MODELS[family]
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(diffusers, cls)(**config)
    return model.to(torch.bfloat16).eval()


def family_flops(family: str) -> tuple[float, float]:
    """(FLOPs of one forward counted on the meta device, parameters)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = family_transformer(family, "meta")
    inputs = FAMILY_MODELS[family][3](model, "meta")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(**inputs, return_dict=False)
    return float(counter.get_total_flops()), float(sum(p.numel() for p in model.parameters()))


def family_sampler(args) -> None:
    """Times one family's real-size transformer forward on the GPU; MFU against the measured matmul peak."""
    total, params = family_flops(args.family)
    model = family_transformer(args.family, "cuda")
    inputs = FAMILY_MODELS[args.family][3](model, "cuda")

    def forward():
        with torch.inference_mode():
            model(**inputs, return_dict=False)

    cuda_time(forward, args.warmup)
    with GpuBusy() as busy:
        start = time.perf_counter()
        times = cuda_time(forward, args.steps)
        window = (start, time.perf_counter())
    peak = matmul_peak()
    per = sum(times) / len(times)
    print(f"sampler: {FAMILY_MODELS[args.family][1]} ({params / 1e9:.3f} B params, random weights, bf16)")
    print(f"  {per:.3f} s per forward (min {min(times):.3f}, max {max(times):.3f}, {args.steps} timed after "
          f"{args.warmup} warm-up); GPU busy {fmt_busy(busy.mean(*window))}")
    print(f"  counted FLOPs per forward {total / 1e12:.1f} T; achieved {total / per / 1e12:.0f} TFLOP/s; measured "
          f"bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; MFU {total / per / peak:.1%}")
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def build_checkpoint(folder: str, transformer) -> None:
    """A diffusers Wan folder: real-size transformer and VAE (random), a one-layer text encoder of width 4096."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from stages.models.builtin import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=8,
        relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = AutoencoderKLWan()  # its defaults are the Wan 2.1 VAE's configuration
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.to(torch.bfloat16), vae=vae,
                       transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(folder)


def pipeline_run(args, transformer) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    tmp = tempfile.mkdtemp(prefix="rushes-gpu-")
    start = time.perf_counter()
    build_checkpoint(f"{tmp}/model", transformer)
    torch.cuda.empty_cache()
    print(f"full pipeline: checkpoint built in {time.perf_counter() - start:.0f} s at {tmp}/model")
    rows = [{"id": f"clip{i:03d}", "prompt": f"a robot arm moves box {i} across a warehouse", "seed": i}
            for i in range(args.rows)]
    pq.write_table(pa.Table.from_pylist(rows), f"{tmp}/manifest.parquet")
    gpu = {"num_cpus": 1, "num_gpus": 0.5}
    job = {"name": "gpu-bench", "manifest": f"{tmp}/manifest.parquet", "output": f"{tmp}/out",
           "model": {"family": "wan", "path": f"{tmp}/model", "dtype": "bfloat16"},
           "sampling": {"height": HEIGHT, "width": WIDTH, "num_frames": FRAMES, "fps": 16,
                        "num_inference_steps": args.pipeline_steps, "guidance_scale": 5.0},
           "sample": {"batch_size": 1, "resources": gpu}, "decode": {"resources": gpu},
           "encode": {"keep_rejected": True, "preset": "veryfast"}}
    with open(f"{tmp}/job.yaml", "w") as f:
        yaml.safe_dump(job, f)
    cli = "import sys; from pipeline.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", cli, "run", f"{tmp}/job.yaml"]
    commits, tail = [], []
    with GpuBusy() as busy:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            if line.startswith("[rushes] committed"):
                commits.append(time.perf_counter())
        end = time.perf_counter()
    if proc.wait():
        sys.exit(f"rushes run failed (exit {proc.returncode}):\n{''.join(tail)}")
    from pipeline.library import read_records

    statuses = Counter(read_records(f"{tmp}/out").column("status").to_pylist())
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    print(f"  {args.rows} videos ({by_status}) of {WIDTH}x{HEIGHT}x{FRAMES}, {args.pipeline_steps} steps with CFG, "
          f"in {end - start:.1f} s ({args.rows / (end - start) * 60:.2f} videos/min, {len(commits)} commits)")
    print(f"  GPU busy: {fmt_busy(busy.mean(start, end))} of the whole run (Ray start-up and model loads "
          f"included); {fmt_busy(busy.mean(commits[0], commits[-1]) if len(commits) > 1 else None)} from the "
          f"first commit to the last")
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="timed forwards")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rows", type=int, default=6, help="videos in the full-pipeline run")
    ap.add_argument("--pipeline-steps", type=int, default=4, help="denoising steps in the full-pipeline run")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--family", default="wan", choices=["wan", *FAMILY_MODELS])
    args = ap.parse_args()
    if args.family != "wan":
        total, params = family_flops(args.family)
        print(f"{platform.node()} | {os.cpu_count()} cores | torch {torch.__version__}")
        print(f"FLOP count, {FAMILY_MODELS[args.family][1]}: {params / 1e9:.3f} B params, {total / 1e12:.1f} TFLOP "
              "per forward (FlopCounterMode, meta device)")
        if not torch.cuda.is_available():
            sys.exit("bench/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
                     f"(torch {torch.__version__}). Run it on a GPU machine; nothing was measured.")
        print(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
        family_sampler(args)
        print("full pipeline: Wan's only (--family wan)")
        return
    total, plain, parts = forward_flops(build_transformer("meta"), latent_shape())
    print(f"{platform.node()} | {os.cpu_count()} cores | torch {torch.__version__}")
    print(f"FLOP model, Wan2.1 1.3B at {WIDTH}x{HEIGHT}x{FRAMES}: {parts['params'] / 1e9:.3f} B params, "
          f"{parts['tokens']} tokens, {total / 1e12:.1f} TFLOP per forward (plain formula {plain / 1e12:.1f})")
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
                 f"(torch {torch.__version__}). Run it on a GPU machine; nothing was measured.")
    print(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    transformer = sampler(args)
    if not args.skip_pipeline:
        pipeline_run(args, transformer)


if __name__ == "__main__":
    main()
