"""Train builtin:toy-shapes (a tiny WanPipeline) and builtin:toy-clip on the toy world, on one CPU thread.

    OMP_NUM_THREADS=1 PYTHONPATH=. python -m training.toy_world.train

Stages, each resumable (a finished stage is skipped, an interrupted one resumes from its last checkpoint):
  vae      AutoencoderKLWan (4x spatial, 4x temporal, z=8) on freshly drawn clips: L1 + MSE + small KL
  latents  draws N_LATENT clips and encodes them (posterior mean); per-channel latent mean/std
  dit      WanTransformer3DModel + UMT5 text encoder, jointly, rectified flow in normalised latent space
  build    WanPipeline(...).save_pretrained(stages/models/weights/toy-shapes), round-trip checked
  clip     a small CLIPModel on 4 frames stacked as 12 channels, contrastive with colour/direction/shape-swapped
           negatives, on drawn clips and on latents decoded by the VAE
  own_videos  the built toy model's own videos for fresh prompts (n_own), each judged by image analysis; made
           in chunks of 50 that a second process of this stage, started beside it, shares
  clip_own the CLIP above fine-tuned on those videos: those judged right scored above clip_own_margin, those
           judged wrong (and right ones with a small extra object added) below it, the contrastive loss kept;
           saved to stages/models/weights/toy-clip

Work files (checkpoints, latents) go to training/toy_world/work/ (git-ignored) or $TOY_WORK.
Every stage's wall time is written to work/timings.json and the total is printed at the end.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np

from training.toy_world import models as M
from training.toy_world.models import cosine_lr, save_atomic
from training.toy_world import world

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("TOY_WORK", Path(__file__).resolve().parent / "work"))
PIPE_OUT = ROOT / "stages" / "models" / "weights" / "toy-shapes"
CLIP_OUT = ROOT / "stages" / "models" / "weights" / "toy-clip"

# Seed ranges: training clips never overlap the evaluation seeds (evaluate.py uses 9_000_000+).
VAE_SEED, LATENT_SEED, CLIP_SEED, OWN_SEED = 0, 1_000_000, 2_000_000, 3_000_000

# The recipe of the shipped weights (about six and a half hours on one thread of this project's 2-core VM, about
# four and a half with TOY_THREADS=2; README.md says how the shipped run differed).
FULL = dict(vae_steps=1100, vae_batch=6, vae_crop=32, vae_lr=1e-3, vae_kl=1e-4, vae_noise=0.1, vae_fg_weight=4.0,
            n_latent=6000, dit_steps=20000, dit_batch=16, dit_fg_weight=4.0, clip_steps=2000,
            n_clip=12000, n_clip_vae=3000, clip_vae_share=0.4, n_own=1600, n_own_val=200, clip_own_steps=1500,
            clip_own_lr=1e-4, clip_own_margin=0.85, clip_own_weight=2.0)
QUICK = dict(vae_steps=30, vae_batch=2, vae_noise=0.1, vae_kl=1e-4, n_latent=200, dit_steps=40, dit_batch=8,
             dit_fg_weight=4.0, clip_steps=30, n_clip=400, n_clip_vae=64,
             clip_vae_share=0.4, n_own=8, n_own_val=2, clip_own_steps=4, clip_own_lr=1e-4, clip_own_margin=0.85,
             clip_own_weight=2.0)


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def setup_torch():
    import torch

    torch.set_num_threads(int(os.environ.get("TOY_THREADS", "1")))  # 1: the figures README.md states
    torch.manual_seed(0)
    return torch


def stop_requested(stage: str) -> bool:
    """True when the file work/STOP_<stage> exists: the stage then ends early as if its last step were done
    (used to cut a run short; the final weights are those of the current step / EMA)."""
    return (WORK / f"STOP_{stage}").exists()


def record_time(stage: str, seconds: float) -> None:
    f = WORK / "timings.json"
    t = json.loads(f.read_text()) if f.exists() else {}
    t[stage] = t.get(stage, 0.0) + seconds
    f.write_text(json.dumps(t, indent=1))


# -- stage: VAE ---------------------------------------------------------------------------------------------
def vae_batch(rng: np.random.Generator, n: int, frames: int = 17, crop: int = 32):
    """n clips: a random `frames`-long window of a drawn 17-frame clip, cropped to crop x crop, in [-1, 1].
    The whole 17 frames by default: a VAE trained on 9-frame windows decoded frames 9-16 of a 17-frame clip
    badly (mean |error| 0.05 on frames 0-8, rising to 0.5 by frame 16), so it sees whole clips, cropped."""
    out = np.empty((n, 3, frames, crop, crop), np.float32)
    for i in range(n):
        clip, _, _, _ = world.sample_clip(int(rng.integers(2**31)))
        t0 = int(rng.integers(0, world.FRAMES - frames + 1))
        y0, x0 = (int(rng.integers(0, (world.SIZE - crop) // 4 + 1)) * 4 for _ in range(2))
        c = clip[t0:t0 + frames, y0:y0 + crop, x0:x0 + crop]
        out[i] = c.transpose(3, 0, 1, 2) / 127.5 - 1
    return out


def decode_unclamped(vae, z):
    """AutoencoderKLWan._decode without its final clamp to [-1, 1]: the clamp has zero gradient wherever the
    output overshoots, which stalls training (black and white pixels sit at the clamp's edges)."""
    import torch

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(outs, 2)


def stage_vae(cfg: dict) -> None:
    torch = setup_torch()
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "vae_final.pt"
    if out.exists():
        return
    ck = WORK / "vae_ckpt.pt"
    vae = M.new_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    step, rng = 0, np.random.default_rng(VAE_SEED)
    if ck.exists():
        s = torch.load(ck, weights_only=False)
        vae.load_state_dict(s["model"]), opt.load_state_dict(s["opt"])
        step, rng = s["step"], s["rng"]
        torch.set_rng_state(s["torch_rng"])
        log(f"vae: resumed at step {step}")
    total, lr = cfg["vae_steps"], cfg.get("vae_lr", 1e-3)
    vae.train()
    t0 = time.time()
    while step < total and not stop_requested("vae"):
        xn = vae_batch(rng, cfg["vae_batch"], cfg.get("vae_frames", 17), cfg.get("vae_crop", 32))
        x = torch.from_numpy(xn)
        # pixels away from the (flat) background weigh more: the objects are what the captions are about
        bgc = np.median(xn[:, :, :, [0, -1]].reshape(*xn.shape[:2], -1), axis=-1)[:, :, None, None, None]
        fg = torch.from_numpy((np.abs(xn - bgc).max(axis=1, keepdims=True) > 0.1).astype(np.float32))
        w = 1.0 + cfg.get("vae_fg_weight", 4.0) * fg
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, lr, 50)
        post = vae.encode(x).latent_dist
        if cfg.get("vae_noise") is None:  # a VAE: decode a posterior sample, KL to N(0, 1)
            z = post.sample()
            kl = 0.5 * (post.mean ** 2 + post.var - 1 - post.logvar).mean()
        else:  # nearly deterministic: the posterior mean plus fixed small noise, and a small pull towards 0
            z = post.mean + cfg["vae_noise"] * torch.randn_like(post.mean)
            kl = 0.5 * (post.mean ** 2).mean()
        y = decode_unclamped(vae, z)
        rec_l1 = ((y - x).abs() * w).mean()
        rec_l2 = (((y - x) ** 2) * w).mean()
        loss = rec_l1 + rec_l2 + cfg.get("vae_kl", 1e-5) * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0 or step == total:
            log(f"vae step {step}/{total} l1w {rec_l1.item():.4f} l2w {rec_l2.item():.5f} kl {kl.item():.3f} "
                f"post_std {post.std.mean().item():.3f} ({(time.time() - t0) / 60:.1f} min)")
        if step % 100 == 0 and step < total:
            save_atomic(dict(model=vae.state_dict(), opt=opt.state_dict(), step=step, rng=rng,
                             torch_rng=torch.get_rng_state()), ck)
    save_atomic(vae.state_dict(), out)


def load_vae():
    return M.load_vae(WORK / "vae_final.pt")


# -- stage: latents -------------------------------------------------------------------------------------
def stage_latents(cfg: dict) -> None:
    torch = setup_torch()
    out = WORK / "latents.npz"
    if out.exists():
        return
    vae = load_vae()
    n, chunk = cfg["n_latent"], 500
    parts = []
    for start in range(0, n, chunk):
        part = WORK / f"latents_{start:06d}.npz"
        if not part.exists():
            zs, scenes = [], []
            for b in range(start, min(start + chunk, n), 20):
                clips = []
                for i in range(b, min(b + 20, n)):
                    rng = np.random.default_rng(LATENT_SEED + i)
                    objs, bg = world.random_scene(rng)
                    clips.append(world.render(objs, bg, rng))
                    scenes.append(json.dumps(dict(objs=[o.__dict__ for o in objs], bg=bg)))
                x = torch.from_numpy(np.stack(clips).transpose(0, 4, 1, 2, 3).astype(np.float32) / 127.5 - 1)
                with torch.no_grad():
                    zs.append(vae.encode(x).latent_dist.mean.numpy().astype(np.float16))
            np.savez(part.with_suffix(".tmp.npz"), z=np.concatenate(zs), scenes=np.array(scenes))
            os.replace(part.with_suffix(".tmp.npz"), part)
            log(f"latents {min(start + chunk, n)}/{n}")
        parts.append(part)
    z = np.concatenate([np.load(p)["z"] for p in parts])
    scenes = np.concatenate([np.load(p)["scenes"] for p in parts])
    zf = z.astype(np.float64)
    mean = zf.mean(axis=(0, 2, 3, 4))
    std = zf.std(axis=(0, 2, 3, 4))
    np.savez(WORK / "latents.tmp.npz", z=z, scenes=scenes, mean=mean, std=std)
    os.replace(WORK / "latents.tmp.npz", out)
    for p in parts:
        p.unlink()
    log(f"latents: {z.shape}, mean {np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()}")


# -- stage: transformer + text encoder --------------------------------------------------------------------
def sample_sigmas(gen, n: int):
    """Noise levels: 70% logit-normal(0, 1), 30% uniform, so that both mid and extreme noise are trained."""
    import torch

    ln = torch.sigmoid(torch.randn(n, generator=gen))
    un = torch.rand(n, generator=gen)
    pick = torch.rand(n, generator=gen) < 0.7
    return torch.where(pick, ln, un).clamp(1e-3, 1.0)


def foreground_weight(x0, weight: float):
    """Per latent position: `weight` where the normalised latent differs from its frame's background (the median
    over the frame's positions) by more than 0.5 RMS over channels, 1 elsewhere, scaled to a mean of 1."""
    bg = x0.flatten(3).median(dim=3).values[..., None, None]
    fg = ((x0 - bg).pow(2).mean(1, keepdim=True).sqrt() > 0.5).to(x0.dtype)
    w = 1 + (weight - 1) * fg
    return w / w.mean()


def prompt_for(scene: dict, rng: np.random.Generator) -> str:
    objs = [world.Obj(**o) for o in scene["objs"]]
    if len(objs) == 2 and rng.random() < 0.5:
        objs = objs[::-1]  # either object may be named first
    return world.noisy_prompt(world.phrase_prompt(objs, scene["bg"], int(rng.integers(world.N_STYLES))), rng)


def stage_dit(cfg: dict) -> None:
    torch = setup_torch()
    out = WORK / "dit_final.pt"
    if out.exists():
        return
    data = np.load(WORK / "latents.npz")
    mean = torch.tensor(data["mean"], dtype=torch.float32).view(1, -1, 1, 1, 1)
    std = torch.tensor(data["std"], dtype=torch.float32).view(1, -1, 1, 1, 1)
    z_all = torch.from_numpy(data["z"])
    scenes = [json.loads(s) for s in data["scenes"]]
    tok = M.build_t5_tokenizer()
    torch.manual_seed(1)
    te = M.new_text_encoder(tok)
    torch.manual_seed(2)
    tr = M.new_transformer()
    params = list(tr.parameters()) + list(te.parameters())
    lr = cfg.get("dit_lr", 6e-4)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    holder = M.enable_compact_text(tr)
    ema_tr, ema_te = copy.deepcopy(tr).eval(), copy.deepcopy(te).eval()
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(4)
    step = 0
    ck = WORK / "dit_ckpt.pt"
    if ck.exists():
        s = torch.load(ck, weights_only=False)
        tr.load_state_dict(s["tr"]), te.load_state_dict(s["te"]), opt.load_state_dict(s["opt"])
        ema_tr.load_state_dict(s["ema_tr"]), ema_te.load_state_dict(s["ema_te"])
        gen.set_state(s["gen"])
        step, rng = s["step"], s["rng"]
        log(f"dit: resumed at step {step}")
    total, bs = cfg["dit_steps"], cfg["dit_batch"]
    n_tr = sum(p.numel() for p in tr.parameters())
    n_te = sum(p.numel() for p in te.parameters())
    log(f"dit: transformer {n_tr / 1e6:.2f} M params, text encoder {n_te / 1e6:.3f} M, {len(z_all)} clips")
    tr.train(), te.train()
    t0, run = time.time(), []
    while step < total and not stop_requested("dit"):
        idx = torch.randint(len(z_all), (bs,), generator=gen)
        x0 = (z_all[idx].float() - mean) / std
        prompts = [prompt_for(scenes[i], rng) for i in idx.tolist()]
        prompts = ["" if rng.random() < 0.1 else p for p in prompts]  # for classifier-free guidance
        sigma = sample_sigmas(gen, bs)
        noise = torch.randn(x0.shape, generator=gen)
        s5 = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s5) * x0 + s5 * noise
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, lr, 100)
        emb, holder["bias"] = M.encode_compact(tok, te, prompts)  # == the pipeline's 512-token encoding
        v = tr(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=emb, return_dict=False)[0]
        # objects cover ~9% of latent positions: weigh them up (weight 1: the plain mean)
        err = ((v - (noise - x0)) ** 2).mean(1, keepdim=True)
        loss = (err * foreground_weight(x0, cfg.get("dit_fg_weight", 1.0))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, e in ((tr, ema_tr), (te, ema_te)):
                for p, q in zip(m.parameters(), e.parameters()):
                    q.lerp_(p, 1 - decay)
        run.append(loss.item())
        if step % 25 == 0 or step == total:
            log(f"dit step {step}/{total} loss {np.mean(run):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({(time.time() - t0) / 60:.1f} min)")
            run = []
        if step % 200 == 0 and step < total:
            save_atomic(dict(tr=tr.state_dict(), te=te.state_dict(), opt=opt.state_dict(),
                             ema_tr=ema_tr.state_dict(), ema_te=ema_te.state_dict(), gen=gen.get_state(),
                             step=step, rng=rng), ck)
            save_atomic(dict(tr=ema_tr.state_dict(), te=ema_te.state_dict()), WORK / "dit_snapshot.pt")
    save_atomic(dict(tr=ema_tr.state_dict(), te=ema_te.state_dict()), out)


# -- stage: build ----------------------------------------------------------------------------------------
def recommended() -> dict:
    return json.loads((Path(__file__).resolve().parent / "recommended.json").read_text())


def build_pipeline(target: Path, dit_file: Path | None = None, shift: float | None = None) -> None:
    """The WanPipeline folder from the trained VAE, transformer and text encoder."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    data = np.load(WORK / "latents.npz")
    vae = load_vae()
    vae.register_to_config(latents_mean=[round(float(v), 5) for v in data["mean"]],
                           latents_std=[round(float(v), 5) for v in data["std"]])
    tok = M.build_t5_tokenizer()
    te, tr = M.new_text_encoder(tok), M.new_transformer()
    s = torch.load(dit_file or WORK / "dit_final.pt")
    tr.load_state_dict(s["tr"]), te.load_state_dict(s["te"])
    sched = FlowMatchEulerDiscreteScheduler(shift=shift if shift is not None else recommended()["flow_shift"])
    pipe = WanPipeline(tokenizer=tok, text_encoder=te.eval(), vae=vae, transformer=tr.eval(), scheduler=sched)
    target.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(target)
    # the settings it was trained for: a job that names builtin:toy-shapes and sets no sampling keys gets them
    settings = {**recommended(), **({"flow_shift": shift} if shift is not None else {})}
    (target / "rushes_recommended.json").write_text(json.dumps(settings) + "\n")


def check_pipeline(target: Path) -> None:
    """Round trip: from_pretrained, encode_prompt equals the training encoding, one video samples and decodes."""
    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    pipe = WanPipeline.from_pretrained(target, vae=None, torch_dtype=torch.float32)
    vae = AutoencoderKLWan.from_pretrained(target, subfolder="vae")
    p = "a red circle moves left and a blue square moves up on a gray background"
    pos, _ = pipe.encode_prompt(prompt=[p], negative_prompt=[""], do_classifier_free_guidance=True,
                                max_sequence_length=512)
    with torch.no_grad():
        mine = M.encode_prompts(pipe.tokenizer, pipe.text_encoder, [p])
    err = (pos - mine).abs().max().item()
    assert err < 1e-5, f"pipeline prompt encoding differs from training's by {err}"
    assert vae.config.scale_factor_spatial == 4 and vae.config.scale_factor_temporal == 4
    log(f"build: {target} loads back; encode_prompt matches training encoding (max diff {err:.1e})")


def stage_build(cfg: dict) -> None:
    setup_torch()
    build_pipeline(PIPE_OUT)
    check_pipeline(PIPE_OUT)


def stage_clip(cfg: dict) -> None:
    from training.toy_world import clip_train  # imported here: the other stages do not need it

    setup_torch()
    clip_train.train(cfg, WORK, CLIP_OUT, CLIP_SEED)


def stage_own_videos(cfg: dict) -> None:
    from training.toy_world import clip_train

    setup_torch()
    clip_train.own_videos(WORK, PIPE_OUT, cfg["n_own"], OWN_SEED, log)


def stage_clip_own(cfg: dict) -> None:
    from training.toy_world import clip_train

    setup_torch()
    clip_train.train_own(cfg, WORK, PIPE_OUT, CLIP_OUT, OWN_SEED)


STAGES = {"vae": stage_vae, "latents": stage_latents, "dit": stage_dit, "build": stage_build, "clip": stage_clip,
          "own_videos": stage_own_videos, "clip_own": stage_clip_own}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of: " + ", ".join(STAGES))
    ap.add_argument("--quick", action="store_true", help="minutes-long smoke run (work dir work-quick/)")
    ap.add_argument("--redo", action="store_true", help="run the stages even if they are done")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one setting of the recipe, e.g. --set dit_steps=1600 (integers or floats)")
    args = ap.parse_args()
    global WORK, PIPE_OUT, CLIP_OUT
    if args.quick:
        WORK = WORK.with_name(WORK.name + "-quick")
        PIPE_OUT, CLIP_OUT = WORK / "toy-shapes", WORK / "toy-clip"
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = dict(QUICK if args.quick else FULL)
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in FULL:
            ap.error(f"--set {kv}: unknown setting {key!r}; known: {', '.join(FULL)}")
        cfg[key] = float(value) if "." in value or "e" in value else int(value)
    if args.set:
        log(f"recipe: {json.dumps(cfg)}")
    t_all = time.time()
    for name in args.stages.split(","):
        t = time.time()
        log(f"== stage {name}")
        STAGES[name](cfg)
        dt = time.time() - t
        record_time(name, dt)
        log(f"== stage {name} done in {dt / 60:.1f} min")
    timings = json.loads((WORK / "timings.json").read_text())
    log(f"this run: {(time.time() - t_all) / 60:.1f} min; all stages so far (work/timings.json): "
        f"{sum(timings.values()) / 60:.1f} min {json.dumps({k: round(v / 60, 1) for k, v in timings.items()})}")


if __name__ == "__main__":
    main()
