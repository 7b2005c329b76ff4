"""Peak memory of the decode, filter and encode workers for a long video, at 10 s and at 60 s.

A long row never holds its frames (stages/long_video/stream.py): decode writes one segment's frames at a time, filter and
encode read one at a time. This runs each worker's part alone in a fresh process (its peak RSS is its own, not
the benchmark's) on the same model and size at each duration, and prints the peaks, which should be about equal.
For contrast it also runs the whole-video decode and encode that short rows use (frames held whole), at 10 s only
by default: at 60 s that path needs about 2.2 GB of uint8 frames plus the VAE's float output (about 9 GB).

The model is builtin:tiny-skyreels-df's VAE (Wan's causal VAE, tiny channels): the latents are random, at the real
SkyReels-V2-DF-540P shape (16 channels, 544x960 pixels -> 68x120 latents), 24 fps, segments of its 97-frame window
with 17 frames of overlap. The frames and the encoder are full size; a real VAE adds its own (constant) weights
and activations for one latent frame.

    python -m bench.long_video_memory [--durations 10 60] [--height 544 --width 960] [--whole 10] [--synthetic]

`--synthetic` skips the VAE (too slow at 544x960 on a CPU): a moving, compressible picture stands for the
decoded frames, written one chunk per segment as decode writes them, and the filter and encode workers run
on it at full size. The encode worker holds the finished MP4 (it hands the bytes to the write stage), so its
peak grows with the file's size; random latents through a tiny VAE make noise that compresses badly.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

MODEL = "builtin:tiny-skyreels-df"


def row_for(seconds: float, args) -> dict:
    from stages.long_video.windows import frames_for

    n = frames_for(seconds, args.fps)
    return {"id": f"bench-{seconds:g}s", "variant": 0, "params_hash": "b" * 64, "num_frames": n, "fps": args.fps,
            "base_num_frames": 97, "overlap_history": 17, "status": "pending"}


def latents_for(r: dict, args):
    import numpy as np

    t = (r["num_frames"] - 1) // 4 + 1
    return np.random.default_rng(0).standard_normal((16, t, args.height // 8, args.width // 8), dtype=np.float32)


def worker(part: str, seconds: float, args) -> dict:
    """One worker's part on one video, in this process; returns what it did and its peak RSS."""
    import numpy as np

    from stages.contract import ModelSpec, RunContext
    from stages.models.checkpoints import resolve_model_path
    from stages.encode import EncodeOptions
    from stages.models.families import family_for
    from stages.long_video.segments import SegmentStore
    from stages.long_video.stream import encode_stream, stream_metrics, write_chunks
    from stages.long_video.windows import segment_frames
    from stages.media.frames import FrameChunks, write_chunk

    fam = family_for("skyreels_df")
    r = row_for(seconds, args)
    ctx = RunContext(output=args.output, model=ModelSpec(family="skyreels_df", path=MODEL))
    state = os.path.join(args.output, f"{r['id']}.json")
    start = time.perf_counter()
    if part == "synthetic":  # the decode worker's output without a VAE: a moving picture, one chunk per segment
        store = SegmentStore(args.output, r["id"], 0, r["params_hash"])
        r["bounds"] = segment_frames(r)
        r["frame_uris"] = []
        yy, xx = np.mgrid[0:args.height, 0:args.width].astype(np.float32)
        for k, (first, end) in enumerate(r["bounds"]):
            t = np.arange(first, end, dtype=np.float32)[:, None, None]
            base = 128 + 60 * np.sin((xx[None] + 4 * t) / 40) + 40 * np.cos((yy[None] - 2 * t) / 30)
            frames = np.stack([base, np.roll(base, 7, axis=2), 255 - base], axis=-1).clip(0, 255).astype(np.uint8)
            r["frame_uris"].append(write_chunk(store.fs, f"{store.folder}/frames/{k:04d}.npy", frames))
        with open(state, "w") as f:
            json.dump(r, f)
    elif part in ("decode", "whole-decode"):
        import torch

        torch.set_num_threads(args.threads)
        vae = fam.load_vae(resolve_model_path(MODEL), "float32", "cpu")
        latents = latents_for(r, args)
        if part == "decode":
            store = SegmentStore(ctx.output, r["id"], 0, r["params_hash"])
            frames, _ = write_chunks(fam.decode_chunks(vae, latents), segment_frames(r), store.fs, store.folder)
            r["frame_uris"], r["bounds"] = frames.uris, frames.bounds
            with open(state, "w") as f:
                json.dump(r, f)
        else:
            frames, _ = fam.decode(vae, latents)
            np.save(os.path.join(args.output, f"{r['id']}-whole.npy"), frames)
    elif part == "filter":
        with open(state) as f:
            r = json.load(f)
        stream_metrics(r, FrameChunks(r["frame_uris"], r["bounds"]), 8.0)
    elif part == "encode":
        with open(state) as f:
            r = json.load(f)
        frames = FrameChunks(r["frame_uris"], r["bounds"])
        r["bytes"] = len(encode_stream(r, frames, EncodeOptions(preset=args.preset), {})["video_bytes"])
    elif part == "whole-encode":
        from stages.encode import EncodeStage

        frames = np.load(os.path.join(args.output, f"{r['id']}-whole.npy"))
        row = {**r, "status": "accepted", "frames": frames, "stage_seconds": {}}
        EncodeStage(EncodeOptions(preset=args.preset)).encode(row, row.pop("frames"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"part": part, "seconds": seconds, "frames": r["num_frames"], "peak_rss_mb": round(peak),
            "wall_s": round(time.perf_counter() - start, 1),
            **({"mp4_mb": round(r["bytes"] / 2**20, 1)} if "bytes" in r else {})}


def run(part: str, seconds: float, args) -> dict:
    cmd = [sys.executable, "-m", "bench.long_video_memory", "--worker", part, "--durations", str(seconds),
           "--output", args.output, "--height", str(args.height), "--width", str(args.width),
           "--fps", str(args.fps), "--preset", args.preset, "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--durations", type=float, nargs="+", default=[10, 60])
    p.add_argument("--whole", type=float, nargs="*", default=[10], help="durations to run the whole-video path at")
    p.add_argument("--height", type=int, default=544)
    p.add_argument("--width", type=int, default=960)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None)
    p.add_argument("--synthetic", action="store_true",
                   help="no VAE: a moving synthetic picture stands for the decoded frames (filter and encode only)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.durations[0], args)))
        return
    with tempfile.TemporaryDirectory(prefix="rushes-long-bench-") as tmp:
        args.output = args.output or tmp
        results = []
        for seconds in args.durations:
            for part in ("synthetic" if args.synthetic else "decode", "filter", "encode"):
                results.append(run(part, seconds, args))
                print(json.dumps(results[-1]), flush=True)
        for seconds in [] if args.synthetic else args.whole:
            for part in ("whole-decode", "whole-encode"):
                results.append(run(part, seconds, args))
                print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.height}x{args.width} at {args.fps} fps, {MODEL} VAE, encode preset {args.preset}")
    print(f"{'worker':<14}{'video':>8}{'frames':>8}{'peak RSS':>11}{'wall':>9}{'  MP4 size':>12}")
    for r in results:
        mp4 = f"{r['mp4_mb']:>9} MB" if "mp4_mb" in r else ""
        print(f"{r['part']:<14}{r['seconds']:>7g}s{r['frames']:>8}{r['peak_rss_mb']:>8} MB{r['wall_s']:>8}s{mp4}")


if __name__ == "__main__":
    main()
