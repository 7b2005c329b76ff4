"""A GPU smoke run of every family at real size: what a first job on a GPU gets from the job file's defaults.

    python bench/gpu.py [--families wan,ltx,cogvideox,hunyuan,skyreels_df] [--steps 2] [--keep DIR]
    python bench/gpu.py --cpu-smoke [--families wan]    # the same code path on the built-in tiny models, on CPU

For each family, a checkpoint folder with random weights is built from the published configs in
tests/checkpoints (nothing is downloaded): the transformer and the VAE at real size, the text encoder(s) at
their real width but cut to two layers (a full umT5-XXL or Llama-8B adds minutes of writing and loading and
nothing to what is measured here: the denoiser's speed and every stage's memory), saved with `save_pretrained`.
A one-row job on that folder then runs through the real stages with `rushes run`, naming no dtype: `auto`
must choose bfloat16 (the VAE in its family's dtype), `num_gpus: auto` shares the GPU between the sample and
decode actors, and the sampling settings are the family's recommendation but for `--steps`. Printed per family,
each beside the plan's estimate (pipeline/gpu_plan.py, on the same folder): the dtypes the record says were used,
the peak GPU memory of the sampler and the decoder (recorded by the stages), seconds per denoising step, model
FLOPs utilization against the datasheet's dense bf16 peak (989 TFLOP/s for an H100 SXM), decode seconds, and
whether the frames are finite. About 6 minutes on one H100 (HunyuanVideo is half of it: 720x1280x129).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine_info import describe  # bench/machine_info.py, next to this file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "checkpoints"
# family: (published config folder, its tiny built-in for --cpu-smoke)
FAMILIES = {"wan": ("wan2.1-t2v-1.3b", "builtin:tiny-wan"), "ltx": ("ltx-video", "builtin:tiny-ltx"),
            "cogvideox": ("cogvideox-5b", "builtin:tiny-cogvideox"),
            "hunyuan": ("hunyuanvideo", "builtin:tiny-hunyuan"),
            "skyreels_df": ("skyreels-v2-df-1.3b-540p", "builtin:tiny-skyreels-df")}
TEXT_LAYERS = 2


def build_checkpoint(config: Path, out: Path, dtype: torch.dtype) -> None:
    """Random weights for every component of `config` (text encoders cut to TEXT_LAYERS layers), made on the GPU
    and saved with save_pretrained; tokenizers are the built-in offline one."""
    import diffusers
    import transformers

    from stages.models.builtin import build_tokenizer

    index = json.loads((config / "model_index.json").read_text())
    shutil.copytree(config / "scheduler", out / "scheduler")
    torch.manual_seed(0)
    for name, (lib, cls_name) in ((k, v) for k, v in index.items() if isinstance(v, list) and v[0]):
        if "tokenizer" in name:
            build_tokenizer().save_pretrained(out / name)
            index[name] = ["transformers", "PreTrainedTokenizerFast"]
            continue
        if lib not in ("diffusers", "transformers") or "scheduler" in name:
            continue
        with torch.device("cuda"):
            if lib == "diffusers":
                cls = getattr(diffusers, cls_name)
                model = cls.from_config(cls.load_config(config / name))
            else:
                cfg = transformers.AutoConfig.from_pretrained(config / name)
                for key in ("num_layers", "num_hidden_layers"):
                    if hasattr(cfg, key):
                        setattr(cfg, key, min(getattr(cfg, key), TEXT_LAYERS))
                model = getattr(transformers, cls_name)._from_config(cfg)
        model.to(torch.float32 if name == "vae" else dtype).save_pretrained(out / name)  # loading casts as asked
        del model
        torch.cuda.empty_cache()
    (out / "model_index.json").write_text(json.dumps(index, indent=1))


def run_job(folder: str, family: str, out: Path, steps: int, cpu: bool) -> tuple[dict, float]:
    """One row through `rushes run` with the job file's defaults (no dtype); its record and the wall seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    pq.write_table(pa.table({"id": ["clip"], "prompt": ["a red kite over a grey sea at dawn"], "seed": [1]}),
                   out / "manifest.parquet")
    sampling = {"num_inference_steps": steps}
    if family == "skyreels_df":
        sampling["num_frames"] = None  # one window: the recommendation
    job = {"name": f"gpu-{family}", "manifest": str(out / "manifest.parquet"), "output": str(out / "library"),
           "model": {"family": family, "path": folder}, "sampling": sampling, "expand": {"mode": "none"},
           # random weights draw noise: record every metric, reject on none, so the video is written and checked
           "filter": {"score_only": ["black_fraction", "constant_fraction", "motion", "flow_residual", "flicker",
                                     "scene_cuts", "brightness", "clipped_low", "clipped_high", "contrast"]},
           "encode": {"preset": "veryfast"}}
    if cpu:
        job["sampling"].update(height=64, width=64, num_frames=9)
    (out / "job.yaml").write_text(yaml.safe_dump(job))
    start = time.perf_counter()
    cli = "import sys; from pipeline.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", cli, "run", str(out / "job.yaml")], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"rushes run exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    from pipeline.library import read_records

    return read_records(str(out / "library")).to_pylist()[0], wall


def plan_for(out: Path, gpu: str):
    """The plan of the same job file, on the same folder (pipeline/gpu_plan.py)."""
    from pipeline.gpu_plan import plan_job
    from pipeline.spec import load_job

    return plan_job(load_job(out / "job.yaml"), gpu)


def measure(family: str, args, base: Path) -> dict:
    config, tiny = FAMILIES[family]
    out = base / family
    out.mkdir(parents=True)
    start = time.perf_counter()
    if args.cpu_smoke:
        folder = tiny
    else:
        folder = str(out / "model")
        build_checkpoint(CONFIGS / config, out / "model", torch.bfloat16)
    built = time.perf_counter() - start
    record, wall = run_job(folder, family, out, args.steps, args.cpu_smoke)
    plan = plan_for(out, args.gpu)
    seconds = dict(record["stage_seconds"] or [])  # maps come back from Parquet as (key, value) pairs
    peaks = dict(record.get("gpu_peak_gib") or [])
    need = {s["stage"]: s["needs_gib"] for s in plan.stages}
    flops = plan.flops  # one variant: the only row
    mfu = flops / seconds["sample"] / (args.peak_tflops * 1e12) if seconds.get("sample") else None
    metrics = dict(record.get("metrics") or {})
    return dict(family=family, config=config if not args.cpu_smoke else tiny, status=record["status"],
                error=record.get("error"), dtype=record["model_dtype"], vae_dtype=record.get("vae_dtype"),
                vae_tiling=record.get("vae_tiling"), shape=f"{record['width']}x{record['height']}x{record['num_frames']}",
                steps=record["num_inference_steps"], sample_s=seconds.get("sample"),
                s_per_step=seconds.get("sample", 0) / record["num_inference_steps"], decode_s=seconds.get("decode"),
                peak_sample=peaks.get("sample"), plan_sample=need.get("sample"), peak_decode=peaks.get("decode"),
                plan_decode=need.get("decode"), mfu=mfu, pflop=flops / 1e15,
                plan_s_per_step=flops / record["num_inference_steps"] / (args.peak_tflops * 1e12 * plan.mfu),
                finite=metrics.get("nonfinite_fraction", 1.0) == 0.0, build_s=built, wall_s=wall)


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    ap.add_argument("--steps", type=int, default=2, help="denoising steps of the one video per family")
    ap.add_argument("--gpu", default="h100-80gb", help="the GPU the plan's estimates are for")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the built-in tiny models on CPU (checks the code path)")
    ap.add_argument("--keep", help="keep the checkpoints and libraries in this folder")
    args = ap.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (--cpu-smoke runs the same code on the tiny models on CPU)")
    print(describe())
    base = Path(args.keep or tempfile.mkdtemp(prefix="rushes-gpu-"))
    rows = []
    try:
        for family in args.families.split(","):
            try:
                rows.append(measure(family, args, base))
            except Exception as e:  # noqa: BLE001 - one family's failure is a finding, the others still run
                rows.append(dict(family=family, status="error", error=f"{type(e).__name__}: {str(e)[-400:]}"))
            r = rows[-1]
            if r["status"] == "error":
                print(f"{family}: ERROR {r['error']}")
                continue
            print(f"{family} ({r['config']}), {r['shape']}, {r['steps']} steps: status {r['status']}"
                  + (f" ({r['error']})" if r.get("error") else ""))
            print(f"  dtype {r['dtype']}, VAE {r['vae_dtype']}{' tiled' if r['vae_tiling'] else ''}; frames finite: "
                  f"{r['finite']}; checkpoint built in {r['build_s']:.0f} s, run {r['wall_s']:.0f} s")
            print(f"  sampler peak {fmt(r['peak_sample'])} GiB (plan {fmt(r['plan_sample'])}); decoder peak "
                  f"{fmt(r['peak_decode'])} GiB (plan {fmt(r['plan_decode'])})")
            print(f"  {fmt(r['s_per_step'], '.3f')} s/step (plan at its MFU: {fmt(r['plan_s_per_step'], '.3f')}); "
                  f"MFU {fmt(100 * r['mfu'] if r['mfu'] else None, '.1f')}% of {args.peak_tflops:g} TFLOP/s "
                  f"({r['pflop']:.1f} PFLOP); decode {fmt(r['decode_s'], '.1f')} s")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    ok = sum(r["status"] in ("accepted", "rejected") and r.get("finite") for r in rows)
    print(f"gpu_smoke families {len(rows)} ok {ok}")
    sys.exit(0 if ok == len(rows) else 1)


if __name__ == "__main__":
    main()
