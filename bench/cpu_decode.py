"""VAE decode on CPU with PyTorch's own kernel choices against Rushes' (stages/models/cpu_kernels.py), side by side.

    python bench/cpu_decode.py [--threads 1] [--height 240 --width 416 --latent-frames 9] [--real-size]

Decodes the same random latents with the builtin tiny Wan VAE (or, with `--real-size`, Wan2.1's VAE config:
96 base channels, random weights, built in memory) twice: as loaded, then after `speed_up_cpu_decode`.
Prints the machine, seconds per decode (best of `--reps`), the ratio, the largest difference in the output
and in uint8 levels, and where the time went before (the top kernels from torch.profiler).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from machine_info import describe  # noqa: E402  (bench/machine_info.py, next to this file)


def best_of(fn, reps: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=416)
    ap.add_argument("--latent-frames", type=int, default=9, help="9 latent frames decode to 33 frames")
    ap.add_argument("--real-size", action="store_true", help="Wan2.1's VAE config instead of the tiny one")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from diffusers import AutoencoderKLWan

    from stages.models.cpu_kernels import speed_up_cpu_decode

    torch.manual_seed(0)
    if a.real_size:
        vae, name = AutoencoderKLWan().eval(), "Wan2.1 VAE config (base_dim 96, random weights)"
    else:
        from stages.models.checkpoints import resolve_model_path

        vae = AutoencoderKLWan.from_pretrained(resolve_model_path("builtin:tiny-wan"), subfolder="vae").eval()
        name = "builtin:tiny-wan VAE (base_dim 8)"
    z = torch.randn(1, vae.config.z_dim, a.latent_frames, a.height // 8, a.width // 8)
    frames = 1 + 4 * (a.latent_frames - 1)

    def decode():
        with torch.no_grad():
            return vae.decode(z).sample

    print(describe())
    print(f"{name}: {a.width}x{a.height}, {frames} frames, {a.threads} thread(s), best of {a.reps}")
    from torch.profiler import profile

    with profile() as prof:
        decode()
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:4]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("  before, by kernel: " + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in top))
    before, expected = best_of(decode, a.reps)
    counts = speed_up_cpu_decode(vae)
    after, got = best_of(decode, a.reps)
    to_uint8 = lambda v: ((v.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    levels = (to_uint8(got) - to_uint8(expected)).abs()
    print(f"  PyTorch's kernels: {before:.2f} s per decode")
    print(f"  Rushes' kernels ({counts['convolutions']} convolutions, {counts['norms']} norms): {after:.2f} s "
          f"per decode -> {before / after:.2f}x")
    print(f"  largest difference {(got - expected).abs().max().item():.2e}; uint8: at most {levels.max().item():.0f} "
          f"level(s), in {100 * (levels > 0).float().mean().item():.4f}% of values")


if __name__ == "__main__":
    main()
