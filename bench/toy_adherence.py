"""Does `builtin:toy-shapes` draw what it is told? Prompts of the toy world with fresh seeds, made by the job file's
own code (pipeline.job.run_job: what `rushes run` calls), each MP4 decoded back and measured by plain image
analysis (training/toy_world/world.py: the background, each object's colour, shape and track, the object count).

    python bench/toy_adherence.py [--prompts 300] [--seed 900000] [--expand none|template] [--keep DIR]
                                  [--set KEY=VALUE ...]

Prompts follow the world's grammar (`a {colour} {shape} {motion} on a {background} background`, one or two
objects), seeds start at --seed (training drew its clips from other seeds). `--expand template` runs the
template expander, which appends words outside the world (camera, light, style): the model should ignore them.
`--set sample.cache='{kind: first_block, threshold: 0.2}'` changes any job key (YAML values). Printed: the share
right of each attribute (per object), of two-object prompts with both objects right, of the count, the median
displacement of moving objects, and seconds per video (sample + decode). Its last line is
`toy_adherence colour <pct> shape <pct> direction <pct> both <pct> count <pct> n <prompts>`.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import overrides  # noqa: E402 - bench/overrides.py, next to this file
from machine_info import describe  # noqa: E402 - bench/machine_info.py, next to this file

SCORE_ONLY = ["black_fraction", "constant_fraction", "motion", "flow_residual", "flicker", "scene_cuts", "brightness",
              "clipped_low", "clipped_high", "contrast", "sharpness"]


def prompts(n: int, seed: int) -> list[str]:
    from training.toy_world.world import canonical_prompt, random_scene

    rng = np.random.default_rng(seed)
    return [canonical_prompt(*random_scene(rng)) for _ in range(n)]


def frames_of(uri: str) -> np.ndarray:
    import av
    import fsspec

    with fsspec.open(uri, "rb") as f, av.open(io.BytesIO(f.read())) as c:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in c.decode(c.streams.video[0])])


def run(texts: list[str], seed: int, out: Path, args) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.graph import show_ray_data_progress
    from pipeline.job import run_job
    from pipeline.library import read_records
    from pipeline.spec import load_job

    pq.write_table(pa.table({"id": [f"p{i:05d}" for i in range(len(texts))], "prompt": texts,
                             "seed": [seed + i for i in range(len(texts))]}), out / "manifest.parquet")
    job = {"name": "toy-adherence", "manifest": str(out / "manifest.parquet"), "output": str(out / "library"),
           "model": {"path": "builtin:toy-shapes"}, "expand": {"mode": args.expand},
           "filter": {"score_only": SCORE_ONLY, "max_duplicate_distance": None},
           "encode": {"keep_rejected": True, "preset": "veryfast"}}
    overrides.apply(job, args.set)
    show_ray_data_progress(False)  # the figures, not Ray Data's progress lines
    run_job(load_job(job), echo=lambda *_: None)
    return read_records(str(out / "library")).to_pylist()


def measure(records: list[dict]) -> dict:
    from training.toy_world.world import analyze, judge

    tally = {k: [] for k in ("colour", "shape", "direction", "both", "count")}
    moves, seconds = [], []
    for r in records:
        if not r.get("video_uri"):
            continue
        a = analyze(frames_of(r["video_uri"]), r["prompt"])
        j = judge(a, r["prompt"])
        for o in j["objects"]:
            tally["colour"].append(o["colour"])
            tally["shape"].append(o["shape"])
            tally["direction"].append(o["motion"])
        if len(j["objects"]) == 2:
            tally["both"].append(j["all"])
        tally["count"].append(j["count"])
        moves += [o["displacement"] for o in a["objects"] if o["motion"] != "still"]
        s = dict(r["stage_seconds"] or [])
        seconds.append(s.get("sample", 0.0) + s.get("decode", 0.0))
    pct = {k: 100.0 * sum(v) / len(v) if v else float("nan") for k, v in tally.items()}
    return dict(pct=pct, n={k: len(v) for k, v in tally.items()}, videos=len(seconds),
                displacement=statistics.median(moves) if moves else 0.0,
                seconds=statistics.median(seconds) if seconds else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--seed", type=int, default=900_000, help="first seed: prompts and sampling seeds start here")
    ap.add_argument("--expand", choices=["none", "template"], default="none")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a job-file key, e.g. "
                    "sample.cache='{kind: first_block, threshold: 0.2}'")
    ap.add_argument("--keep", help="keep the library in this folder")
    args = ap.parse_args()
    print(describe())
    out = Path(args.keep or tempfile.mkdtemp(prefix="rushes-toy-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = run(prompts(args.prompts, args.seed), args.seed, out, args)
    wall = time.perf_counter() - start
    m = measure(records)
    p, n = m["pct"], m["n"]
    print(f"builtin:toy-shapes, {m['videos']} videos ({args.prompts} prompts, seeds from {args.seed}, expand "
          f"{args.expand}{', ' + ', '.join(args.set) if args.set else ''}) in {wall:.0f} s")
    print(f"  colour    {p['colour']:5.1f}%  of {n['colour']} objects")
    print(f"  shape     {p['shape']:5.1f}%")
    print(f"  direction {p['direction']:5.1f}%  (moving objects' median displacement {m['displacement']:.1f} px "
          "over the clip)")
    print(f"  both objects right in two-object prompts {p['both']:5.1f}%  of {n['both']}")
    print(f"  object count right {p['count']:5.1f}%")
    print(f"  {m['seconds']:.2f} s per video (sample + decode, median)")
    print(f"toy_adherence colour {p['colour']:.1f} shape {p['shape']:.1f} direction {p['direction']:.1f} "
          f"both {p['both']:.1f} count {p['count']:.1f} n {m['videos']}")


if __name__ == "__main__":
    main()
