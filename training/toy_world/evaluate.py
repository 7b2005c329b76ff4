"""Prompt adherence of the toy WanPipeline, measured by plain image analysis of generated clips.

    OMP_NUM_THREADS=1 PYTHONPATH=. python -m training.toy_world.evaluate [--n 100] [--model stages/models/weights/toy-shapes]

Prompts are drawn from the grammar (half one-object, half two-object, canonical phrasing unless --styles)
with seeds from 9_000_000 up, which no training clip used; each video is sampled through the project's path
(WanPipeline loaded without its VAE, encode_prompt at 512 tokens, pipe(..., output_type='latent'), then
AutoencoderKLWan decode of z * latents_std + latents_mean) and judged by world.analyze/judge.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training.toy_world import world

EVAL_SEED = 9_000_000
HERE = Path(__file__).resolve().parent


def load(path: str):
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    pipe = WanPipeline.from_pretrained(path, vae=None, torch_dtype=torch.float32)
    config = AutoencoderKLWan.load_config(path, subfolder="vae")
    pipe.vae_scale_factor_spatial = int(config.get("scale_factor_spatial") or 8)
    pipe.vae_scale_factor_temporal = int(config.get("scale_factor_temporal") or 4)
    pipe.set_progress_bar_config(disable=True)
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32).eval()
    return pipe, vae


def set_shift(pipe, shift: float) -> None:
    config = dict(pipe.scheduler.config)
    config["flow_shift" if "flow_shift" in config else "shift"] = shift
    pipe.scheduler = type(pipe.scheduler).from_config(config)


def generate(pipe, vae, prompt: str, seed: int, s: dict, negative: str = "") -> np.ndarray:
    """One video (T, H, W, 3) uint8 through the project's sampling and decoding path."""
    import torch

    cfg = s["guidance_scale"] > 1.0
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompt=[prompt], negative_prompt=[negative], do_classifier_free_guidance=cfg,
                                      max_sequence_length=512)
        out = pipe(prompt_embeds=pos, negative_prompt_embeds=neg if cfg else None, height=s["height"],
                   width=s["width"], num_frames=s["num_frames"], num_inference_steps=s["num_inference_steps"],
                   guidance_scale=s["guidance_scale"], generator=[torch.Generator("cpu").manual_seed(seed)],
                   output_type="latent")
        z = out.frames.float()
        c = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
        video = vae.decode(z * std + mean, return_dict=False)[0][0]
    return ((video.permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def eval_prompts(n: int, styles: bool = False, template: bool = False) -> list[tuple[str, int]]:
    """n (prompt, noise seed) pairs: alternately one and two objects, drawn with fresh seeds. With `template`,
    each prompt as the project's default expander (stages/models/template.py) rewrites it."""
    from stages.models.template import template as expand

    out = []
    for i in range(n):
        rng = np.random.default_rng(EVAL_SEED + i)
        objs, bg = world.random_scene(rng, 1 + i % 2)
        style = int(rng.integers(world.N_STYLES)) if styles else 0
        prompt = world.phrase_prompt(objs, bg, style)
        if template:
            prompt = expand(prompt, EVAL_SEED + 200_000 + i, None)[0]
        out.append((prompt, EVAL_SEED + 100_000 + i))
    return out


def evaluate(pipe, vae, s: dict, n: int, styles: bool = False, save: Path | None = None, verbose: bool = False,
             template: bool = False):
    tally = {k: [] for k in ("colour", "shape", "motion", "object_all", "one_all", "two_colour", "two_motion",
                             "two_all", "count", "background")}
    secs, disp = [], []
    rows = []
    for prompt, seed in eval_prompts(n, styles, template):
        t = time.time()
        frames = generate(pipe, vae, prompt, seed, s)
        secs.append(time.time() - t)
        a = world.analyze(frames, prompt)
        j = world.judge(a, prompt)
        for o in j["objects"]:
            tally["colour"].append(o["colour"]), tally["shape"].append(o["shape"])
            tally["motion"].append(o["motion"]), tally["object_all"].append(o["all"])
        if len(j["objects"]) == 1:
            tally["one_all"].append(j["all"])
        else:
            tally["two_colour"].append(all(o["colour"] for o in j["objects"]))
            tally["two_motion"].append(all(o["motion"] for o in j["objects"]))
            tally["two_all"].append(j["all"])
        tally["count"].append(j["count"]), tally["background"].append(j["background"])
        disp += [o["displacement"] for o in a["objects"] if o["motion"] != "still"]
        rows.append(dict(prompt=prompt, seed=seed, analysis=a, judge=j))
        if verbose:
            print(prompt, "|", [(o["colour"], o["shape"], o["motion"], o["displacement"]) for o in a["objects"]],
                  "OK" if j["all"] else "", flush=True)
        if save is not None and len(rows) <= 16:
            import cv2

            save.mkdir(parents=True, exist_ok=True)
            strip = np.concatenate([frames[i] for i in (0, 4, 8, 12, 16)], axis=1)
            cv2.imwrite(str(save / f"{len(rows):02d}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    res = {k: round(100 * float(np.mean(v)), 1) for k, v in tally.items() if v}
    res["n_videos"] = n
    res["n_objects"] = len(tally["colour"])
    res["seconds_per_video"] = round(float(np.median(secs)), 3)
    res["median_displacement_px"] = round(float(np.median(disp)), 1) if disp else 0.0
    return res, rows


def vae_check(path: str | None, n: int, work: Path | None = None) -> dict:
    """Reconstruction of drawn held-out clips by the VAE: PSNR, and analyze/judge accuracy on the reconstructions."""
    import torch

    if path:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae").eval()
    else:
        from training.toy_world import train

        vae = train.load_vae()
    ok, psnr = [], []
    for i in range(n):
        frames, prompt, _, _ = world.sample_clip(EVAL_SEED + 500_000 + i)
        x = torch.from_numpy(frames.transpose(3, 0, 1, 2)[None].astype(np.float32) / 127.5 - 1)
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
        rec = ((y.permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        mse = ((rec.astype(np.float64) - frames) ** 2).mean()
        psnr.append(10 * np.log10(255 ** 2 / max(mse, 1e-6)))
        ok.append(world.judge(world.analyze(rec, prompt), prompt)["all"])
    return {"n": n, "psnr": round(float(np.mean(psnr)), 2), "judge_all": round(100 * float(np.mean(ok)), 1)}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HERE.parents[1] / "stages" / "models" / "weights" / "toy-shapes"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--styles", action="store_true", help="all training phrasings, not only the canonical one")
    ap.add_argument("--template", action="store_true", help="prompts as the template expander rewrites them")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--shift", type=float)
    ap.add_argument("--save", help="folder for PNG strips of the first 16 videos")
    ap.add_argument("--json", help="write the results and per-video analyses here")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--vae-check", action="store_true", help="only check the VAE's reconstructions of drawn clips "
                    "(of --model, or of the training work folder's VAE with --model work)")
    args = ap.parse_args()
    if args.vae_check:
        print(json.dumps(vae_check(None if args.model == "work" else args.model, args.n)))
        return
    s = json.loads((HERE / "recommended.json").read_text())
    if args.steps:
        s["num_inference_steps"] = args.steps
    if args.guidance is not None:
        s["guidance_scale"] = args.guidance
    if args.shift is not None:
        s["flow_shift"] = args.shift
    pipe, vae = load(args.model)
    set_shift(pipe, s["flow_shift"])
    res, rows = evaluate(pipe, vae, s, args.n, args.styles, Path(args.save) if args.save else None, args.verbose,
                         args.template)
    print(json.dumps({"settings": s, "template": args.template, "styles": args.styles, **res}))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": s, "results": res, "videos": rows}, indent=1))


if __name__ == "__main__":
    main()
