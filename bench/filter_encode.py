"""Cost of the filter and encode stages per video, at a real model's size (480x832, 81 frames).

    python bench/filter_encode.py [--videos 2] [--height 480 --width 832 --frames 81] [--with-model]

Content is synthetic and moving (a texture panning 2 px per frame under a moving square), so that the
encoders see something like footage rather than noise. Prints the machine, then per stage: wall seconds
per video, frames per second, CPU seconds per video (all threads), and frames per CPU-second, which is
the per-core figure. `--with-model` also times the tiny model's sample and decode stages at the same
size (minutes on a CPU). Figures, not assertions: compare stages within one run.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from stages.encode import EncodeOptions, EncodeStage
from stages.filter import FilterOptions, FilterStage
from stages.media.frames import FrameArray

from machine_info import describe  # noqa: E402 - bench/ is the script's folder


def machine() -> str:
    return describe(extra=f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")


def moving_clip(t: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(h // 16 + 2, (w + 2 * t) // 16 + 2, 3)).astype(np.uint8)
    big = cv2.resize(cells, (cells.shape[1] * 16, cells.shape[0] * 16), interpolation=cv2.INTER_CUBIC)
    frames = np.stack([big[:h, 2 * i:2 * i + w] for i in range(t)])
    for i in range(t):
        x = (8 + 6 * i) % (w - h // 4)
        frames[i, h // 3:h // 3 + h // 4, x:x + h // 4] = (230, 200, 60)
    return frames


def rows_for(clips: list[np.ndarray], fps: int) -> list[dict]:
    return [{"id": f"v{i}", "variant": 0, "status": "pending", "frames": FrameArray(c), "prompt": "bench", "fps": fps,
             "params_hash": "0" * 64, "stage_seconds": {}} for i, c in enumerate(clips)]


def timed(name: str, stage, rows: list[dict], frames: int) -> tuple[list[dict], float]:
    n = len(rows)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = stage(rows)
    wall, cpu = (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n
    print(f"  {name:<22} {wall:8.3f} s/video  {frames / wall:8.1f} frames/s  {cpu:8.3f} CPU-s/video  "
          f"{frames / cpu:8.1f} frames/CPU-s")
    return rows, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--fps", type=int, default=16)
    ap.add_argument("--with-model", action="store_true", help="also time the tiny model's sample and decode")
    a = ap.parse_args()
    print(machine())
    print(f"{a.videos} videos of {a.width}x{a.height}, {a.frames} frames, synthetic moving content")
    clips = [moving_clip(a.frames, a.height, a.width, seed=i) for i in range(a.videos)]

    if a.with_model:
        from stages.decode import DecodeOptions, DecodeStage
        from stages.common.variant import variants_of
        from stages.expand import ExpandOptions, ExpandStage
        from stages.sample import SampleOptions, SampleStage

        model_rows = [{"row": i, "id": f"m{i}", "prompt": "a cat walking on a beach", "negative_prompt": "",
                       "seed": i, "num_variants": 1, "height": a.height, "width": a.width, "num_frames": a.frames,
                       "fps": a.fps, "num_inference_steps": 4, "guidance_scale": 5.0, "style": None, "tags": [],
                       "extra": {}} for i in range(a.videos)]
        expand, data = ExpandStage(ExpandOptions()), []
        for r in model_rows:  # planned as a run does it: the template writes the prompts in the driver
            data += variants_of(r, None)
            expand.plan(r, data[-1:])
        cpu = {"num_gpus": 0}
        for name, stage in (("sample (tiny, 4 steps)", SampleStage(SampleOptions(resources=cpu))),
                            ("decode (tiny)", DecodeStage(DecodeOptions(resources=cpu)))):
            stage.setup()
            data, _ = timed(name, stage, data, a.frames)

    # Score only: the synthetic clips should all reach the encoder whatever their metrics say.
    spec = FilterOptions(score_only=["motion", "flow_residual", "flicker", "scene_cuts", "contrast"])
    rows, filter_s = timed("filter", FilterStage(spec), rows_for(clips, a.fps), a.frames)
    print(f"    metrics of the first: { {k: round(v, 2) for k, v in rows[0]['metrics'].items()} }")
    print(f"    statuses: {sorted(r['status'] for r in rows)}")
    walls = {}
    for codec, preset in (("h264", "medium"), ("h264", "veryfast"), ("av1", "medium"), ("vp9", "medium")):
        stage = EncodeStage(EncodeOptions(codec=codec, preset=preset))
        enc_rows = [dict(r, status="accepted", frames=FrameArray(c), stage_seconds={}) for r, c in zip(rows, clips)]
        out, walls[codec, preset] = timed(f"encode {codec} {preset}", stage, enc_rows, a.frames)
        assert all(r["status"] == "accepted" for r in out), [r.get("error") for r in out]
        print(f"    {np.mean([len(r['video_bytes']) for r in out]) / 1e6:.2f} MB/video, "
              f"preview {np.mean([len(r['preview_bytes']) for r in out]) / 1e3:.0f} kB")
    print(f"  filter / encode (h264 medium, the default) = {filter_s / walls['h264', 'medium']:.3f}")


if __name__ == "__main__":
    main()
