"""builtin:toy-clip: a small transformers CLIPModel trained contrastively on the toy world.

A clip is shown to the vision tower as one image of 3 x FRAMES channels: FRAMES evenly spaced 64x64 frames, each
normalised by the image processor (whose resize is a no-op at the tower's image_size, 64), concatenated along the
channel axis, earliest first. An object's motion is then visible inside one 8x8 patch and its neighbours, rather
than across four tiles of one large image (the 2x2 grid of the first versions, which never learnt direction).
The layout is written to rushes_clip.json in the checkpoint folder.

Each batch's texts are the clips' own captions plus, per clip, one caption with an object's colour swapped, one
with its motion swapped and one with its shape swapped (or an object added or dropped): the model must read colour,
direction and shape, not only the scene's gist. A share of the clips (clip_vae_share) are drawn clips passed
through the toy model's VAE (work/latents.npz decoded), so that the blur of generated videos is not new to it.

Score = 100 * max(cos(text_embeds, image_embeds), 0), with the normalised projections of CLIPModel's output.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from stages.models.clip_score import frame_indices
from training.toy_world import models as M
from training.toy_world import world

FRAMES = 4
LAYOUT = {"frames": FRAMES, "layout": "channels", "order": "earliest first",
          "frame_indices": "np.linspace(0, T - 1, 4).round()",
          "input": "each frame through the image processor, then the frames concatenated along the channel axis: "
                   "pixel_values (1, 3 * frames, S, S); the vision tower has num_channels = 3 * frames"}
IMAGE_SIZE = 64
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
HELD_OUT_SEED = 9_500_000  # drawn clips the CLIP is evaluated on (clip_eval too); no training stage draws them


# Words the CLIP tokenizer knows: the world's, and a few function words. Anything else is <unk>.
CLIP_WORDS = list(dict.fromkeys([*world.VOCAB, "the", "an", "is", "in", "of", "with", "two", "object", "objects",
                                 "shape", "shapes", ".", ";", ":", "-"]))
# Out-of-world words for prompt augmentation, besides the project's template expansion
NOISE_WORDS = ("beautiful scene video quickly slowly big small shiny very bright simple flat clean nice colorful "
               "toy sharp smooth hd 4k camera style glowing tiny large bold cute plain minimal motion graphic "
               "animation frame lovely calm vivid").split()


def build_tokenizer():
    """CLIP-style word-level tokenizer: <|startoftext|> words <|endoftext|>, padded with <|endoftext|> (CLIP pools
    at the first one); words outside the world are <unk>, so appended text never ends the caption early."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|startoftext|>", "<|endoftext|>", "<unk>", *CLIP_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=77)


def expand(prompt: str, seed: int) -> str:
    """The project's template expansion (expand.mode: template) of a prompt."""
    from stages.models.template import template

    return template(prompt, seed, None)[0]


def augment(prompt: str, rng) -> str:
    """Half the time the template expansion, a quarter of the time 1-4 random out-of-world words put anywhere."""
    r = rng.random()
    if r < 0.5:
        return expand(prompt, int(rng.integers(2**31)))
    if r < 0.75:
        words = prompt.split()
        for _ in range(int(rng.integers(1, 5))):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(NOISE_WORDS)))
        return " ".join(words)
    return prompt


def stack(frames: np.ndarray, k: int = FRAMES) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (k, H, W, 3): the frames at frame_indices(T), earliest first."""
    return frames[frame_indices(len(frames), k)]


def to_pixels(stacks: np.ndarray):
    """(N, k, S, S, 3) uint8 stacks at IMAGE_SIZE -> CLIP pixel_values (N, 3k, S, S): each frame normalised as
    CLIPImageProcessor does, the frames concatenated along the channel axis (as stages/models/clip_score.py)."""
    import torch

    x = (stacks.astype(np.float32) / 255.0 - MEAN) / STD
    n, k, h, w, c = x.shape
    return torch.from_numpy(x.transpose(0, 1, 4, 2, 3).reshape(n, k * c, h, w).copy())


def swap_colour(objs: list, bg: str, rng) -> str:
    i = int(rng.integers(len(objs)))
    used = {o.colour for o in objs}
    new = str(rng.choice([c for c in world.COLOURS if c not in used]))
    o = objs[i]
    objs = list(objs)
    objs[i] = world.Obj(new, o.shape, o.motion)
    return objs, bg


def swap_motion(objs: list, bg: str, rng, opposite: bool = False):
    i = int(rng.integers(len(objs)))
    o = objs[i]
    if opposite and o.motion in OPPOSITE:
        new = OPPOSITE[o.motion]
    elif opposite:  # a still object: any direction
        new = str(rng.choice(["left", "right", "up", "down"]))
    else:
        new = str(rng.choice([m for m in world.MOTIONS if m != o.motion]))
    objs = list(objs)
    objs[i] = world.Obj(o.colour, o.shape, new)
    return objs, bg


def swap_shape(objs: list, bg: str, rng):
    i = int(rng.integers(len(objs)))
    o = objs[i]
    objs = list(objs)
    objs[i] = world.Obj(o.colour, str(rng.choice([x for x in world.SHAPES if x != o.shape])), o.motion)
    return objs, bg


def swap_count(objs: list, bg: str, rng):
    """One object dropped from a two-object caption, or one added to a one-object caption."""
    if len(objs) == 2:
        return [objs[int(rng.integers(2))]], bg
    extra, _ = world.random_scene(rng, 1)
    while extra[0].colour == objs[0].colour:
        extra, _ = world.random_scene(rng, 1)
    return [*objs, *extra], bg


REVERSED = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "still"}
MIRRORED = {"left": "right", "right": "left", "up": "up", "down": "down", "still": "still"}


def reverse_stack(s: np.ndarray) -> np.ndarray:
    """The stack of the time-reversed clip."""
    return s[::-1]


def mirror_stack(s: np.ndarray) -> np.ndarray:
    """The stack of the left-right mirrored clip (all shapes are symmetric)."""
    return s[:, :, ::-1]


def degrade(s: np.ndarray, rng) -> np.ndarray:
    """A light blur and noise, like a generated clip's."""
    s = np.stack([cv2.GaussianBlur(f, (0, 0), float(rng.uniform(0.4, 1.2))) for f in s])
    return np.clip(s + rng.normal(0, rng.uniform(0, 6), s.shape), 0, 255).astype(np.uint8)


def draw_stacks(n: int, seed0: int, blur: bool = True):
    """n drawn clips as frame stacks, with their scenes. Half are blurred/noised a little, like generated ones."""
    stacks = np.empty((n, FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    scenes = []
    for i in range(n):
        rng = np.random.default_rng(seed0 + i)
        objs, bg = world.random_scene(rng)
        s = stack(world.render(objs, bg, rng))
        stacks[i] = degrade(s, rng) if blur and rng.random() < 0.5 else s
        scenes.append((objs, bg))
    return stacks, scenes


def vae_stacks(work: Path, n: int, log) -> tuple[np.ndarray, list]:
    """The first n clips of work/latents.npz decoded by the trained VAE (work/vae_final.pt), as frame stacks:
    drawn clips with the toy model's own decoder blur, the look of its generated videos."""
    import torch

    out = work / "clip_vae_stacks.npz"
    if out.exists():
        d = np.load(out)
        return d["stacks"], [scene_of(x) for x in d["scenes"]]
    data = np.load(work / "latents.npz")
    vae = M.load_vae(work / "vae_final.pt")
    n = min(n, len(data["z"]))
    stacks = np.empty((n, FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    t0 = time.time()
    for s in range(0, n, 16):
        z = torch.from_numpy(data["z"][s:min(s + 16, n)].astype(np.float32))
        with torch.inference_mode():
            x = vae.decode(z).sample  # (B, 3, T, H, W) in [-1, 1]
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy().transpose(0, 2, 3, 4, 1)
        for j, clip in enumerate(x):
            stacks[s + j] = stack(clip)
        if (s // 16) % 25 == 0:
            log(f"clip: decoded {s + len(x)}/{n} latents ({(time.time() - t0) / 60:.1f} min)")
    np.savez(work / "clip_vae_stacks.tmp.npz", stacks=stacks, scenes=data["scenes"][:n])
    (work / "clip_vae_stacks.tmp.npz").rename(out)
    return stacks, [scene_of(x) for x in data["scenes"][:n]]


OWN_CHUNK = 50


def _claim(path: Path) -> bool:
    """Claim a chunk for this process: create its .claim file holding our PID. A claim whose process is gone
    (killed mid-chunk) is stale and taken over, so an interrupted stage never waits for it."""
    import os

    claim = path.with_suffix(".claim")
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(claim.read_text() or 0), 0)
                return False  # its process is alive: it makes the chunk
            except (ProcessLookupError, ValueError, FileNotFoundError):
                claim.unlink(missing_ok=True)  # stale
                continue
            except PermissionError:
                return False  # alive, another user's
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def own_videos(work: Path, model_dir: Path, n: int, seed0: int, log) -> dict:
    """n videos of the trained toy model (model_dir) for random grammar prompts and fresh seeds, as frame stacks,
    each judged by plain image analysis (right: every object's colour, shape and motion, the object count and the
    background: world.all_right). Made in chunks of OWN_CHUNK under work/own/; a chunk is claimed first (_claim),
    so two processes of this stage on one machine share the work, and an interrupted one resumes."""
    from training.toy_world import evaluate as E

    folder = work / "own"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [folder / f"chunk_{k:04d}.npz" for k in range((n + OWN_CHUNK - 1) // OWN_CHUNK)]
    pipe = vae = None
    s = json.loads((Path(__file__).resolve().parent / "recommended.json").read_text())
    said = False
    while not all(c.exists() for c in chunks):
        mine = next((k for k, c in enumerate(chunks) if not c.exists() and _claim(c)), None)
        if mine is None:  # the rest are being made by another process: say which, once
            if not said:
                held = set()
                for c in (c for c in chunks if not c.exists()):
                    try:
                        held.add(c.with_suffix(".claim").read_text().strip())
                    except FileNotFoundError:
                        pass  # made, or taken over, meanwhile
                log(f"own_videos: waiting for {sum(not c.exists() for c in chunks)} chunk(s) being made by "
                    f"process(es) {', '.join(sorted(held))}; a claim whose process dies is taken over")
                said = True
            time.sleep(5)
            continue
        path = chunks[mine]
        if pipe is None:
            pipe, vae = E.load(str(model_dir))
            E.set_shift(pipe, s["flow_shift"])
        t0 = time.time()
        stacks, prompts, ok = [], [], []
        for i in range(mine * OWN_CHUNK, min(n, (mine + 1) * OWN_CHUNK)):
            rng = np.random.default_rng(seed0 + i)
            objs, bg = world.random_scene(rng)
            prompt = world.canonical_prompt(objs, bg)
            frames = E.generate(pipe, vae, prompt, seed0 + 1_000_000 + i, s)
            stacks.append(stack(frames))
            prompts.append(prompt)
            ok.append(world.all_right(world.judge(world.analyze(frames, prompt), prompt)))
        np.savez(path.with_suffix(".tmp.npz"), stacks=np.stack(stacks), prompts=np.array(prompts), ok=np.array(ok))
        path.with_suffix(".tmp.npz").rename(path)
        log(f"own_videos: chunk {mine + 1}/{len(chunks)}: {sum(ok)} of {len(ok)} judged right "
            f"({(time.time() - t0) / len(ok):.2f} s a video)")
    parts = [np.load(c) for c in chunks]
    return {key: np.concatenate([d[key] for d in parts])[:n] for key in ("stacks", "prompts", "ok")}


def scene_of(js: str) -> tuple[list, str]:
    j = json.loads(str(js))
    return [world.Obj(**o) for o in j["objs"]], j["bg"]


def new_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256,
                     "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"image_size": IMAGE_SIZE, "patch_size": 8, "num_channels": 3 * FRAMES, "hidden_size": 128,
                       "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
        projection_dim=64)
    model = CLIPModel(config)
    sincos_positions(model)
    return model


def _sincos(v: np.ndarray, dims: int, base: float = 100.0) -> np.ndarray:
    freqs = 1.0 / base ** (np.arange(dims // 2) / (dims // 2))
    a = v[:, None] * freqs[None, :]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)


def sincos_positions(model) -> None:
    """Start the vision tower's patch positions from a fixed 2-D sine-cosine code (half x, half y) instead of
    N(0, 0.02), so that neighbouring patches start out related. Still trainable."""
    import torch

    e = model.vision_model.embeddings
    n = e.num_patches
    side = int(round(np.sqrt(n)))
    d = e.position_embedding.weight.shape[1]
    py, px = np.divmod(np.arange(n), side)
    w = np.zeros((n + 1, d))
    w[1:] = 0.7 * np.concatenate([_sincos(px.astype(float), d // 2), _sincos(py.astype(float), d // 2)], axis=1)
    with torch.no_grad():
        e.position_embedding.weight.copy_(torch.from_numpy(w).float())


def save_clip(model, tokenizer, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True, "do_resize": True,
        "size": {"shortest_edge": IMAGE_SIZE}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": MEAN.tolist(), "image_std": STD.tolist()}, indent=2))
    (target / "rushes_clip.json").write_text(json.dumps(LAYOUT, indent=2))


def scores(model, tokenizer, pixels, prompts: list[str]) -> np.ndarray:
    """score[i] = 100 * max(cos(prompt i, image i), 0), through CLIPModel's joint forward like the scorer."""
    import torch

    t = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=pixels)
    cos = (out.image_embeds * out.text_embeds).sum(-1).float().numpy()
    return 100.0 * np.maximum(cos, 0.0)


def discrimination(model, tokenizer, stacks: np.ndarray, scenes: list, seed: int = 0,
                   expanded: bool = False) -> dict:
    """match vs colour-, direction- and shape-swap scores on these clips, and the threshold that separates them.
    expanded: every prompt (match and swaps alike, with the same seed per clip) template-expanded first."""
    rng = np.random.default_rng(seed)
    pos, col, dirn, shp = [], [], [], []
    for s in range(0, len(stacks), 64):
        px = to_pixels(stacks[s:s + 64])
        sc = scenes[s:s + 64]

        def cap(objs_bg, i):
            p = world.canonical_prompt(*objs_bg)
            return expand(p, 77_000 + s + i) if expanded else p

        pos.append(scores(model, tokenizer, px, [cap(x, i) for i, x in enumerate(sc)]))
        col.append(scores(model, tokenizer, px, [cap(swap_colour(*x, rng), i) for i, x in enumerate(sc)]))
        dirn.append(scores(model, tokenizer, px, [cap(swap_motion(*x, rng, True), i) for i, x in enumerate(sc)]))
        shp.append(scores(model, tokenizer, px, [cap(swap_shape(*x, rng), i) for i, x in enumerate(sc)]))
    pos, col, dirn, shp = (np.concatenate(v) for v in (pos, col, dirn, shp))
    neg = np.concatenate([col, dirn])
    # threshold: the one that best separates matches from colour and direction swaps (balanced accuracy)
    cands = np.unique(np.concatenate([pos, neg]))
    acc = [(0.5 * (pos >= c).mean() + 0.5 * (neg < c).mean(), c) for c in cands]
    best_acc, best_c = max(acc)

    def dist(v):
        return {"mean": round(float(v.mean()), 1), "p5": round(float(np.percentile(v, 5)), 1),
                "p50": round(float(np.median(v)), 1), "p95": round(float(np.percentile(v, 95)), 1)}

    return {"n": len(pos), "match_gt_colour_swap": round(100 * float((pos > col).mean()), 1),
            "match_gt_direction_swap": round(100 * float((pos > dirn).mean()), 1),
            "match_gt_shape_swap": round(100 * float((pos > shp).mean()), 1),
            "match": dist(pos), "colour_swap": dist(col), "direction_swap": dist(dirn), "shape_swap": dist(shp),
            "threshold": round(float(best_c), 1), "threshold_balanced_accuracy": round(100 * best_acc, 1)}


def contrastive_loss(model, tok, cfg: dict, drawn, decoded, gen, rng, bs: int = 32):
    """One batch's loss: bs clips (a clip_vae_share of them VAE-decoded), each with its time-reversed partner,
    against their captions and, per clip, a colour-, a direction- and a shape- (or count-) swapped caption."""
    import torch
    import torch.nn.functional as F

    (drawn, drawn_scenes), (decoded, decoded_scenes) = drawn, decoded
    imgs, sc = [], []
    for _ in range(bs):  # a share of the clips come through the toy model's VAE decoder
        src, src_scenes = (decoded, decoded_scenes) if rng.random() < cfg["clip_vae_share"] else \
            (drawn, drawn_scenes)
        i = int(torch.randint(len(src), (1,), generator=gen))
        g, (objs, bg) = src[i], src_scenes[i]
        # time reversal and mirroring: new clips whose captions differ only in direction
        if rng.random() < 0.5:
            g, objs = reverse_stack(g), [world.Obj(o.colour, o.shape, REVERSED[o.motion]) for o in objs]
        if rng.random() < 0.5:
            g, objs = mirror_stack(g), [world.Obj(o.colour, o.shape, MIRRORED[o.motion]) for o in objs]
        if len(objs) == 2 and rng.random() < 0.5:
            objs = objs[::-1]  # either object may be named first
        imgs.append(g)
        sc.append((objs, bg))
    # each clip's time-reversed partner is in the batch too: the hardest negative image for its caption
    imgs += [reverse_stack(g) for g in imgs[:bs]]
    sc += [([world.Obj(o.colour, o.shape, REVERSED[o.motion]) for o in objs], bg) for objs, bg in sc[:bs]]
    n_img = len(imgs)
    px = to_pixels(np.stack(imgs))
    # texts: every image's caption; then per original clip one caption with an object's colour swapped,
    # one with an object's direction reversed (or a still object made to move), and one with an object's
    # shape swapped (a quarter of the time: an object added or dropped), in the same phrasing
    style = [int(rng.integers(world.N_STYLES)) for _ in sc]
    texts = [world.phrase_prompt(o, b, st) for (o, b), st in zip(sc, style)]
    texts += [world.phrase_prompt(*swap_colour(o, b, rng), st) for (o, b), st in zip(sc[:bs], style)]
    texts += [world.phrase_prompt(*swap_motion(o, b, rng, opposite=rng.random() < 0.7), st)
              for (o, b), st in zip(sc[:bs], style)]
    texts += [world.phrase_prompt(*(swap_count(o, b, rng) if rng.random() < 0.25 else swap_shape(o, b, rng)),
                                  st) for (o, b), st in zip(sc[:bs], style)]
    texts = [augment(x, rng) for x in texts]
    # the same scene twice in a batch (an all-still clip and its reversal): not a negative of each other
    keys = [world.canonical_prompt(sorted(o, key=lambda x: x.colour), b) for o, b in sc]
    same = torch.tensor([[a == b_ and i != j for j, b_ in enumerate(keys)] for i, a in enumerate(keys)])
    t = tok(texts, padding=True, return_tensors="pt")
    out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=px)
    li = out.logits_per_image  # (n_img, n_img + 3 bs); image i's caption is text i
    li_pos = li[:, :n_img].masked_fill(same, -1e4)
    li = torch.cat([li_pos, li[:, n_img:]], dim=1)
    labels = torch.arange(n_img)
    loss = F.cross_entropy(li, labels) + F.cross_entropy(li_pos.t(), labels)
    # and each original image against its own three hard negatives alone
    ar = torch.arange(bs)
    hard = torch.stack([li[ar, ar], li[ar, ar + n_img], li[ar, ar + n_img + bs],
                        li[ar, ar + n_img + 2 * bs]], dim=1)
    loss = loss + F.cross_entropy(hard, torch.zeros(bs, dtype=torch.long))
    return loss


def publish(done: Path, tok, target: Path):
    """The finished CLIP of a stage (its work folder `done`), loaded back and saved to `target` with the
    tokenizer, processor config and frame layout; returned in eval mode."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(done).eval()
    save_clip(model, tok, target)
    return model


def checkpoint(path: Path, model, opt, gen, step: int, rng) -> None:
    """Everything a resumed run needs to go on as if never stopped: weights, optimiser, both random streams."""
    M.save_atomic(dict(model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), step=step, rng=rng), path)


def resume(path: Path, model, opt, gen) -> tuple[int, object]:
    """Load a checkpoint() into model, opt and gen; returns its step and numpy generator."""
    import torch

    s = torch.load(path, weights_only=False)
    model.load_state_dict(s["model"]), opt.load_state_dict(s["opt"])
    gen.set_state(s["gen"])
    return s["step"], s["rng"]


def train(cfg: dict, work: Path, target: Path, seed0: int) -> None:
    import torch

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    done = work / "clip_final"
    tok = build_tokenizer()
    if not (done / "config.json").exists():
        data = work / "clip_stacks.npz"
        if not data.exists():
            stacks, scenes = draw_stacks(cfg["n_clip"], seed0)
            np.savez(work / "clip_stacks.tmp.npz", stacks=stacks,
                     scenes=np.array([json.dumps(dict(objs=[o.__dict__ for o in s[0]], bg=s[1])) for s in scenes]))
            (work / "clip_stacks.tmp.npz").rename(data)
            log(f"clip: drew {len(stacks)} clips")
        d = np.load(data)
        drawn, drawn_scenes = d["stacks"], [scene_of(x) for x in d["scenes"]]
        decoded, decoded_scenes = vae_stacks(work, cfg["n_clip_vae"], log)
        torch.manual_seed(5)
        model = new_clip(tok)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
        gen = torch.Generator().manual_seed(6)
        rng = np.random.default_rng(7)
        step = 0
        ck = work / "clip_ckpt.pt"
        if ck.exists():
            step, rng = resume(ck, model, opt, gen)
            log(f"clip: resumed at step {step}")
        total, bs = cfg["clip_steps"], 32
        model.train()
        t0, c0, run = time.time(), time.process_time(), []
        while step < total:
            for g in opt.param_groups:
                g["lr"] = M.cosine_lr(step, total, 5e-4, 50)
            loss = contrastive_loss(model, tok, cfg, (drawn, drawn_scenes), (decoded, decoded_scenes), gen, rng, bs)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            run.append(loss.item())
            if step % 50 == 0 or step == total:
                log(f"clip step {step}/{total} loss {np.mean(run):.3f} scale "
                    f"{model.logit_scale.exp().item():.1f} ({(time.time() - t0) / 60:.1f} min wall, "
                    f"{(time.process_time() - c0) / 60:.1f} min CPU)")
                run = []
            if step % 250 == 0 and step < total:
                checkpoint(ck, model, opt, gen, step, rng)
        save_clip(model.eval(), tok, done)
    model = publish(done, tok, target)
    stacks, scenes = draw_stacks(300, HELD_OUT_SEED, blur=False)  # held-out drawn clips
    res = {"plain": discrimination(model, tok, stacks, scenes),
           "template_expanded": discrimination(model, tok, stacks, scenes, expanded=True)}
    (work / "clip_eval_drawn.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        log(f"clip: held-out drawn clips, {k} prompts: {json.dumps(v)}")


# -- the toy model's own videos -----------------------------------------------------------------------------
def with_extra_object(s: np.ndarray, rng) -> np.ndarray:
    """The stack with a small, often faint, second object drifting across where the background is: the toy
    model's most common failure that no swapped caption describes (a video with it does not show a one-object
    prompt, nor a two-object prompt's two objects alone). Its colour may change from frame to frame."""
    s = s.astype(np.float32)
    k, h, w, _ = s.shape
    bg = np.median(np.concatenate([s[:, 0], s[:, -1], s[:, :, 0], s[:, :, -1]], axis=1).reshape(-1, 3), axis=0)
    r = float(rng.uniform(2.0, 5.0))
    far = np.abs(s - bg).max(-1) >= 40
    free = ~far.any(axis=0)  # background in every frame; else in every frame but the first, which can be off
    free = (free if free.any() else ~far[1:].any(axis=0)).astype(np.uint8)
    # where a centre keeps the whole object (and a 2-pixel margin) off the drawn objects and inside the frame
    d = int(np.ceil(r)) + 2
    ok = cv2.erode(free, np.ones((2 * d + 1, 2 * d + 1), np.uint8), borderValue=0).astype(bool)
    y0, x0, v = h / 4, w / 4, np.zeros(2)
    for _ in range(30):  # a start and a velocity (pixels per stacked frame; still a third of the time)
        ys, xs = np.nonzero(ok)
        if not len(ys):
            break
        i = int(rng.integers(len(ys)))
        vel = rng.uniform(-4, 4, size=2) * (rng.random() < 0.67)
        track = [(int(round(ys[i] + vel[0] * t)), int(round(xs[i] + vel[1] * t))) for t in range(k)]
        if all(0 <= y < h and 0 <= x < w and ok[y, x] for y, x in track):
            y0, x0, v = ys[i], xs[i], vel
            break
        y0, x0, v = ys[i], xs[i], np.zeros(2)  # a still one there, if no moving track fits
    alpha = float(rng.uniform(0.4, 1.0))
    names = list(world.COLOURS)
    colour = world.COLOURS[names[int(rng.integers(len(names)))]]
    out = np.empty_like(s)
    for t in range(k):
        if rng.random() < 0.3:
            colour = world.COLOURS[names[int(rng.integers(len(names)))]]
        mask = np.zeros((h, w), np.float32)
        cy, cx = y0 + v[0] * t, x0 + v[1] * t
        if rng.random() < 0.5:
            cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1.0, -1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]]).round().astype(np.int32)
            cv2.fillPoly(mask, [pts], 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[..., None] * alpha
        out[t] = s[t] * (1 - mask) + np.array(colour, np.float32) * mask
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def own_batch(own: dict, right: np.ndarray, wrong: np.ndarray, gen, rng, n: int = 16):
    """n of the toy model's own videos, half judged right and half wrong (either pool alone if the other is
    empty), each reversed and mirrored at random with its caption to match. Returns the stacks, the texts and
    for each text its image and its label: the video's own caption (1 if the video was judged right, else 0);
    for a right video also its caption with a colour swapped and with a direction reversed (0), and the video
    with a small extra object added (with_extra_object, appended after the n videos) against its caption (0)."""
    import torch

    imgs, texts, img_of, label, extra = [], [], [], [], []
    for k in range(n):
        pool, ok = (right, 1.0) if (k % 2 == 0 and len(right)) or not len(wrong) else (wrong, 0.0)
        i = int(pool[int(torch.randint(len(pool), (1,), generator=gen))])
        g, (objs, bg) = own["stacks"][i], world.parse_prompt(str(own["prompts"][i]))
        if rng.random() < 0.5:
            g, objs = reverse_stack(g), [world.Obj(o.colour, o.shape, REVERSED[o.motion]) for o in objs]
        if rng.random() < 0.5:
            g, objs = mirror_stack(g), [world.Obj(o.colour, o.shape, MIRRORED[o.motion]) for o in objs]
        if len(objs) == 2 and rng.random() < 0.5:
            objs = objs[::-1]
        st = int(rng.integers(world.N_STYLES))
        caps = [(world.phrase_prompt(objs, bg, st), ok)]
        if ok:
            caps += [(world.phrase_prompt(*swap_colour(objs, bg, rng), st), 0.0),
                     (world.phrase_prompt(*swap_motion(objs, bg, rng, opposite=True), st), 0.0)]
        for text, y in caps:
            texts.append(augment(text, rng))
            img_of.append(len(imgs))
            label.append(y)
        imgs.append(g)
        if ok:
            extra.append((with_extra_object(g, rng), caps[0][0]))
    for g, text in extra:
        texts.append(augment(text, rng))
        img_of.append(len(imgs))
        label.append(0.0)
        imgs.append(g)
    return np.stack(imgs), texts, torch.tensor(img_of), torch.tensor(label)


def own_scores(model, tok, own: dict, idx: np.ndarray) -> np.ndarray:
    """The scorer's score of each of these own videos against the prompt it was made for."""
    return np.concatenate([scores(model, tok, to_pixels(own["stacks"][idx[s:s + 64]]),
                                  [str(p) for p in own["prompts"][idx[s:s + 64]]]) for s in range(0, len(idx), 64)])


def threshold_table(sc: np.ndarray, ok: np.ndarray, thresholds=(70, 80, 85, 90, 95)) -> dict:
    """What each min_clip_score would do to videos with these scores: how many it accepts, how many of those
    were judged right (ok), and how many judged right it rejects."""
    return {str(t): {"accepted": int((sc >= t).sum()), "accepted_right": int((ok & (sc >= t)).sum()),
                     "rejected_right": int((ok & (sc < t)).sum())} for t in thresholds}


def train_own(cfg: dict, work: Path, model_dir: Path, target: Path, seed0: int) -> None:
    """Fine-tune the contrastive CLIP (work/clip_final) on the toy model's own videos: besides the contrastive
    loss on drawn and VAE-decoded clips, each step scores 16 own videos against their prompts and pushes the
    score of a video judged right above, and of a video judged wrong below, the boundary (a logistic loss on
    the cosine, centred at clip_own_margin). The wrong ones are the toy model's real failures (a shape that
    breaks apart, a faint extra object, an object of the wrong colour), which no swapped caption describes.
    The last n_own_val videos are held out and reported before and after."""
    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    own = own_videos(work, model_dir, cfg["n_own"], seed0, log)
    n_val = min(cfg["n_own_val"], len(own["ok"]) // 2)
    tr, val = np.arange(len(own["ok"]) - n_val), np.arange(len(own["ok"]) - n_val, len(own["ok"]))
    right, wrong = tr[own["ok"][tr]], tr[~own["ok"][tr]]
    log(f"clip_own: {len(own['ok'])} videos, {int(own['ok'].sum())} judged right; training on {len(tr)} "
        f"({len(right)} right), {n_val} held out")
    tok = build_tokenizer()
    done = work / "clip_own_final"
    report = {}
    if not (done / "config.json").exists():
        d = np.load(work / "clip_stacks.npz")
        drawn = (d["stacks"], [scene_of(x) for x in d["scenes"]])
        decoded = vae_stacks(work, cfg["n_clip_vae"], log)
        model = CLIPModel.from_pretrained(work / "clip_final")
        report["before"] = threshold_table(own_scores(model.eval(), tok, own, val), own["ok"][val])
        log(f"clip_own: held out, before: {json.dumps(report['before'])}")
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["clip_own_lr"], weight_decay=0.05)
        gen = torch.Generator().manual_seed(16)
        rng = np.random.default_rng(17)
        step, total = 0, cfg["clip_own_steps"]
        ck = work / "clip_own_ckpt.pt"
        if ck.exists():
            step, rng = resume(ck, model, opt, gen)
            log(f"clip_own: resumed at step {step}")
        model.train()
        t0, run = time.time(), []
        while step < total:
            for g in opt.param_groups:
                g["lr"] = M.cosine_lr(step, total, cfg["clip_own_lr"], 20)
            loss_c = contrastive_loss(model, tok, cfg, drawn, decoded, gen, rng)
            stacks, texts, img_of, label = own_batch(own, right, wrong, gen, rng)
            t = tok(texts, padding=True, return_tensors="pt")
            out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                        pixel_values=to_pixels(stacks))
            cos = (out.image_embeds[img_of] * out.text_embeds).sum(-1)
            loss_o = F.binary_cross_entropy_with_logits(20.0 * (cos - cfg["clip_own_margin"]), label)
            loss = loss_c + cfg["clip_own_weight"] * loss_o
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            run.append((loss_c.item(), loss_o.item()))
            if step % 25 == 0 or step == total:
                a, b = np.mean(run, axis=0)
                log(f"clip_own step {step}/{total} contrastive {a:.3f} own {b:.3f} "
                    f"({(time.time() - t0) / 60:.1f} min)")
                run = []
            if step % 100 == 0 and step < total:
                checkpoint(ck, model, opt, gen, step, rng)
        save_clip(model.eval(), tok, done)
    model = publish(done, tok, target)
    report["after"] = threshold_table(own_scores(model, tok, own, val), own["ok"][val])
    stacks, scenes = draw_stacks(300, HELD_OUT_SEED, blur=False)  # held-out drawn clips: the swaps still tell
    report["drawn"] = discrimination(model, tok, stacks, scenes)
    report["held_out"] = {"n": int(n_val), "judged_right": int(own["ok"][val].sum())}
    (work / "clip_own_eval.json").write_text(json.dumps(report, indent=1))
    for k, v in report.items():
        log(f"clip_own: {k}: {json.dumps(v)}")
