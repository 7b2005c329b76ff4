"""How well builtin:toy-clip tells a matching prompt from the same prompt with a colour or a direction swapped.

    OMP_NUM_THREADS=1 PYTHONPATH=. python -m training.toy_world.clip_eval [--clip stages/models/weights/toy-clip]
        [--drawn 300] [--generated 100 --model stages/models/weights/toy-shapes]

Scores go through the project's scorer (stages/models/clip_score.py ClipScorer, which reads rushes_clip.json
and tiles or stacks the frames): score = 100 * max(cos(text_embeds, image_embeds), 0).

- drawn: held-out drawn clips (seeds 9_500_000+, never used in training), canonical prompts.
- generated: videos of the toy WanPipeline for evaluate.py's prompts and seeds (fresh, never trained on), split
  by whether plain image analysis judged the video right (every object's colour, shape and motion, the object
  count and the background: world.all_right, as bench/toy_demo_check.py); a swap is scored on the same video;
  and, for a few values of min_clip_score, how many of these videos it accepts and how many of those were judged right.
For each set: how often match > colour-swap and match > direction-swap (the opposite direction; a still object
gets a random direction), the score distributions, and the threshold that best separates matches from swaps.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.toy_world import world
from training.toy_world.clip_train import HELD_OUT_SEED, expand, swap_colour, swap_motion, threshold_table

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parents[1] / "stages" / "models" / "weights"


def _dist(v) -> dict:
    v = np.asarray(v, np.float64)
    if not len(v):
        return {}
    return {"n": len(v), "mean": round(float(v.mean()), 1), "p5": round(float(np.percentile(v, 5)), 1),
            "p25": round(float(np.percentile(v, 25)), 1), "p50": round(float(np.median(v)), 1),
            "p95": round(float(np.percentile(v, 95)), 1)}


def separate(pos, neg) -> tuple[float, float]:
    """The threshold (score >= t passes) with the best balanced accuracy between pos and neg, and that accuracy."""
    pos, neg = np.asarray(pos), np.asarray(neg)
    best = (0.0, 0.0)
    for c in np.unique(np.concatenate([pos, neg])):
        acc = 0.5 * (pos >= c).mean() + 0.5 * (neg < c).mean()
        if acc > best[0]:
            best = (float(acc), float(c))
    return round(best[1], 1), round(100 * best[0], 1)


def score_set(scorer, items, seed: int = 0, expanded: bool = False) -> dict:
    """items: (frames, objs, bg). Scores of the canonical prompt, a colour swap and a direction swap; expanded:
    all three template-expanded (expand.mode: template) with the same seed."""
    rng = np.random.default_rng(seed)
    pos, col, dirn = [], [], []
    for i, (frames, objs, bg) in enumerate(items):
        def cap(o, b):
            p = world.canonical_prompt(o, b)
            return expand(p, 55_000 + i) if expanded else p

        pos.append(scorer.score(cap(objs, bg), frames))
        col.append(scorer.score(cap(*swap_colour(objs, bg, rng)), frames))
        dirn.append(scorer.score(cap(*swap_motion(objs, bg, rng, opposite=True)), frames))
    pos, col, dirn = map(np.array, (pos, col, dirn))
    t, acc = separate(pos, np.concatenate([col, dirn]))
    return {"n": len(pos), "match_gt_colour_swap": round(100 * float((pos > col).mean()), 1),
            "match_gt_direction_swap": round(100 * float((pos > dirn).mean()), 1),
            "match_gt_both": round(100 * float(((pos > col) & (pos > dirn)).mean()), 1),
            "match": _dist(pos), "colour_swap": _dist(col), "direction_swap": _dist(dirn),
            "best_threshold": t, "best_threshold_balanced_accuracy": acc,
            "_scores": {"match": pos.tolist(), "colour_swap": col.tolist(), "direction_swap": dirn.tolist()}}


def drawn_items(n: int, seed0: int = HELD_OUT_SEED):
    for i in range(n):
        rng = np.random.default_rng(seed0 + i)
        objs, bg = world.random_scene(rng)
        yield world.render(objs, bg, rng), objs, bg


def generated_items(model: str, n: int):
    from training.toy_world import evaluate as E

    pipe, vae = E.load(model)
    s = json.loads((HERE / "recommended.json").read_text())
    E.set_shift(pipe, s["flow_shift"])
    out = []
    for prompt, seed in E.eval_prompts(n):
        frames = E.generate(pipe, vae, prompt, seed, s)
        objs, bg = world.parse_prompt(prompt)
        ok = world.all_right(world.judge(world.analyze(frames, prompt), prompt))
        out.append((frames, objs, bg, ok))
    return out


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from stages.models.clip_score import ClipScorer

    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", default=str(WEIGHTS / "toy-clip"))
    ap.add_argument("--drawn", type=int, default=300)
    ap.add_argument("--generated", type=int, default=0)
    ap.add_argument("--model", default=str(WEIGHTS / "toy-shapes"))
    ap.add_argument("--json", help="write all figures (and raw scores) here")
    args = ap.parse_args()
    scorer = ClipScorer(args.clip)
    res = {}
    if args.drawn:
        items = list(drawn_items(args.drawn))
        res["drawn"] = score_set(scorer, items)
        res["drawn_template_expanded"] = score_set(scorer, items, expanded=True)
    if args.generated:
        gen = generated_items(args.model, args.generated)
        res["generated"] = score_set(scorer, [(f, o, b) for f, o, b, _ in gen], seed=1)
        res["generated_template_expanded"] = score_set(scorer, [(f, o, b) for f, o, b, _ in gen], seed=1,
                                                       expanded=True)
        ok = np.array([bool(g[3]) for g in gen])  # judged right by plain image analysis
        m = np.array(res["generated"]["_scores"]["match"])
        res["generated"]["judged_right"] = _dist(m[ok])
        res["generated"]["judged_wrong"] = _dist(m[~ok])
        res["generated"]["_judged_right_flags"] = ok.tolist()
        # what a min_clip_score would do to these videos: how many it accepts, and how many of those are right
        res["generated"]["at_min_clip_score"] = threshold_table(m, ok, (50, 60, 70, 75, 80, 85, 90, 93, 95))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        v = {a: b for a, b in v.items() if not a.startswith("_")}
        print(k, json.dumps(v))


if __name__ == "__main__":
    main()
