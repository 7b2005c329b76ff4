"""The toy world's measuring instrument (plain image analysis of clips) and the two models trained on it and shipped
in the package: builtin:toy-shapes (a WanPipeline) and builtin:toy-clip (a CLIPModel)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from training.toy_world import world

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "stages" / "models" / "weights" / "toy-shapes"
FRESH = 9_900_000  # seeds no training stage drew (training: 0-4,999,999; evaluation: 9,000,000-9,499,999)


def test_the_analysis_reads_every_attribute_of_drawn_clips():
    results = [world.judge(world.analyze(frames, prompt), prompt)
               for frames, prompt, _, _ in (world.sample_clip(FRESH + i) for i in range(40))]
    assert np.mean([r["all"] for r in results]) >= 0.95
    assert all(r["count"] and r["background"] for r in results)


def test_the_analysis_says_wrong_when_the_prompt_asks_for_another_colour_or_direction():
    frames, _, objs, bg = world.sample_clip(FRESH, n_objects=1, style=0)
    o = objs[0]
    colour = next(c for c in world.COLOURS if c != o.colour)
    motion = {"left": "right", "right": "left", "up": "down", "down": "up", "still": "left"}[o.motion]
    analysis = world.analyze(frames)
    right = world.canonical_prompt([o], bg)
    assert world.judge(analysis, right)["all"]
    judged = world.judge(analysis, world.canonical_prompt([world.Obj(colour, o.shape, o.motion)], bg))
    assert not judged["objects"][0]["colour"] and judged["objects"][0]["motion"]
    judged = world.judge(analysis, world.canonical_prompt([world.Obj(o.colour, o.shape, motion)], bg))
    assert judged["objects"][0]["colour"] and not judged["objects"][0]["motion"]


def test_toy_shapes_is_a_small_wan_checkpoint_that_ships_the_settings_it_was_trained_for():
    from stages.models.families import family_for

    index = json.loads((SHAPES / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    size = sum(f.stat().st_size for f in SHAPES.rglob("*") if f.is_file())
    assert size < 40 * 2**20, f"{size / 2**20:.1f} MiB"
    trained = json.loads((ROOT / "training" / "toy_world" / "recommended.json").read_text())
    settings = family_for("wan").recommended("builtin:toy-shapes")
    assert {k: settings[k] for k in trained} == trained
    assert trained["num_inference_steps"] <= 8 and trained["num_frames"] == 17 and trained["height"] >= 64


def test_a_toy_model_folder_named_by_its_path_gets_the_settings_it_was_trained_for(tmp_path):
    """A folder the training builds (its rushes_recommended.json beside model_index.json), named by path rather than
    as the builtin: a job gets its trained settings, not the Wan defaults (832x480, 81 frames), at which the toy
    model cannot sample. A folder without the file keeps the family's defaults."""
    import shutil

    from stages.models.families import family_for

    wan = family_for("wan")
    trained = json.loads((SHAPES / "rushes_recommended.json").read_text())
    for path in (str(SHAPES), f"file://{SHAPES}"):
        settings = wan.recommended(path)
        assert {k: settings[k] for k in trained} == trained, path
    bare = tmp_path / "no-settings"
    shutil.copytree(SHAPES, bare, ignore=shutil.ignore_patterns("rushes_recommended.json", "*.safetensors"))
    assert wan.recommended(str(bare)) == wan.recommended("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert (wan.recommended(str(bare))["width"], wan.recommended(str(bare))["num_frames"]) == (832, 81)


@pytest.mark.slow
def test_a_job_naming_toy_shapes_gets_its_trained_settings_and_draws_the_background_asked_for(ray_local, make_manifest,
                                                                                            tmp_path):
    """Through `rushes run`'s code with no sampling keys: the trained settings, and videos on the background each
    prompt asks for (black or gray: what the model has learnt for certain; its adherence on objects, which falls
    short, is measured by bench/toy_adherence.py)."""
    from pipeline.job import run_job
    from pipeline.library import read_records
    from pipeline.spec import load_job

    scenes = [("red", "circle", "left"), ("blue", "square", "up"), ("yellow", "triangle", "right"),
              ("white", "circle", "down"), ("green", "square", "still"), ("red", "triangle", "right")]
    rows = [{"id": f"s{i}", "prompt": world.canonical_prompt([world.Obj(*s)], "black" if i % 2 else "gray"),
             "seed": 1000 + i} for i, s in enumerate(scenes)]
    spec = load_job({"manifest": make_manifest(rows), "output": str(tmp_path / "out"),
                     "model": {"path": "builtin:toy-shapes"}, "filter": {"score_only": ["motion"]},
                     "encode": {"keep_rejected": True}})
    run_job(spec, echo=lambda _: None)
    records = {r["id"]: r for r in read_records(spec.output).to_pylist()}
    for row in rows:
        r = records[row["id"]]
        assert (r["height"], r["width"], r["num_frames"], r["num_inference_steps"]) == (64, 64, 17, 8)
        with fsspec.open(r["video_uri"], "rb") as f, av.open(io.BytesIO(f.read())) as c:
            frames = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(c.streams.video[0])])
        assert frames.shape == (17, 64, 64, 3)
        assert world.judge(world.analyze(frames, row["prompt"]), row["prompt"])["background"], row["prompt"]


def test_toy_clip_scores_a_matching_prompt_above_the_same_prompt_with_another_colour():
    from stages.models.clip_score import ClipScorer

    scorer = ClipScorer("builtin:toy-clip")
    wins = 0
    for i in range(12):
        frames, _, objs, bg = world.sample_clip(FRESH + 100 + i, n_objects=1, style=0)
        o = objs[0]
        other = next(c for c in world.COLOURS if c != o.colour)
        right = scorer.score(world.canonical_prompt(objs, bg), frames)
        wrong = scorer.score(world.canonical_prompt([world.Obj(other, o.shape, o.motion)], bg), frames)
        wins += right > wrong
    assert wins >= 11


def test_toy_clip_scores_a_matching_prompt_above_the_same_prompt_with_the_opposite_direction():
    """Direction needs several frames at once (the checkpoint's rushes_clip.json stacks four as channels); the
    first toy CLIPs, which tiled them in a 2x2 grid, were near chance here (58% on 300 clips)."""
    from stages.models.clip_score import ClipScorer

    scorer = ClipScorer("builtin:toy-clip")
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    wins = n = 0
    for i in range(40):
        frames, _, objs, bg = world.sample_clip(FRESH + 400 + i, n_objects=1, style=0)
        o = objs[0]
        if o.motion not in opposite:
            continue
        right = scorer.score(world.canonical_prompt(objs, bg), frames)
        wrong = scorer.score(world.canonical_prompt([world.Obj(o.colour, o.shape, opposite[o.motion])], bg), frames)
        wins, n = wins + (right > wrong), n + 1
        if n == 12:
            break
    assert n == 12 and wins >= 11, f"{wins} of {n}"


def test_the_clip_learns_a_right_video_s_caption_as_a_match_and_a_wrong_video_s_as_a_mismatch():
    """clip_own stage: each of the toy model's own videos judged right is a positive for its caption and a negative
    for the caption with a colour swapped and with its direction reversed, and the same video with a small extra
    object is a negative for its caption; a video judged wrong is a negative for its own caption and gets no swap
    (a swap could describe what it drew)."""
    from training.toy_world import clip_train
    import torch

    prompts = ["a red circle moves left on a black background", "a blue square moves up on a gray background"]
    stacks = np.stack([clip_train.stack(world.render(*world.parse_prompt(p), np.random.default_rng(i)))
                       for i, p in enumerate(prompts)])
    own = {"stacks": stacks, "prompts": np.array(prompts), "ok": np.array([True, False])}
    imgs, texts, img_of, label = clip_train.own_batch(own, np.array([0]), np.array([1]),
                                                      torch.Generator().manual_seed(0), np.random.default_rng(0), n=6)
    assert len(imgs) == 6 + 3 and len(texts) == len(img_of) == len(label)

    def words(text):
        return set(text.replace(",", " ").replace(".", " ").split())

    for k in range(6 + 3):
        mine = [(words(t), float(y)) for t, i, y in zip(texts, img_of.tolist(), label) if i == k]
        if k < 6 and k % 2 == 0:  # the right video: its caption, a colour swap, a direction swap
            assert [y for _, y in mine] == [1.0, 0.0, 0.0]
            assert "red" in mine[0][0] and "red" not in mine[1][0]
            assert {"left", "right"} & mine[0][0] != {"left", "right"} & mine[2][0]
        elif k < 6:  # the wrong video: only its own caption, as a mismatch
            assert [y for _, y in mine] == [0.0] and "blue" in mine[0][0]
        else:  # a right video with an extra object: its caption, as a mismatch
            assert [y for _, y in mine] == [0.0] and "red" in mine[0][0] and "blue" not in mine[0][0]
            base = imgs[2 * (k - 6)]
            assert not np.array_equal(imgs[k], base)
            assert np.array_equal(clip_train.with_extra_object(base, np.random.default_rng(1)).shape, base.shape)


def test_a_chunk_claimed_by_a_killed_process_is_taken_over_and_a_live_claim_is_left(tmp_path):
    """own_videos: two processes share the chunks by claiming them; a process killed mid-chunk must not leave
    the others waiting for ever."""
    import os
    import subprocess
    import sys

    from training.toy_world import clip_train

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / "chunk_0000.npz", tmp_path / "chunk_0001.npz"
    stale.with_suffix(".claim").write_text(str(dead.pid))
    live.with_suffix(".claim").write_text(str(os.getpid()))
    assert clip_train._claim(stale) and stale.with_suffix(".claim").read_text() == str(os.getpid())
    assert not clip_train._claim(live)
    fresh = tmp_path / "chunk_0002.npz"
    assert clip_train._claim(fresh) and not clip_train._claim(fresh)


def test_the_extra_object_lies_on_the_background_beside_the_drawn_one():
    from training.toy_world import clip_train

    frames, prompt, objs, bg = world.sample_clip(FRESH + 900, n_objects=1, style=0)
    s = clip_train.stack(frames)
    e = clip_train.with_extra_object(s, np.random.default_rng(3))
    changed = np.abs(e.astype(int) - s.astype(int)).max(-1) > 30
    drawn = np.abs(s.astype(int) - np.array(world.BACKGROUNDS[bg])).max(-1) > 40
    assert changed.any(axis=(1, 2)).all()  # in every stacked frame
    assert not (changed & drawn).any()  # never over the drawn object
    assert changed.sum(axis=(1, 2)).max() < 0.05 * changed[0].size  # small


def test_toy_shapes_draws_the_colour_a_one_object_prompt_asks_for_far_above_chance():
    """Ten one-object prompts with seeds no training or evaluation used, through the project's sampling and decoding
    path (training/toy_world/evaluate.py): the shipped model draws the asked colour in at least 6 (chance: 2 of 10;
    the 12,000-step weights drew 8, the 20,000-step ones 10). A model that ignores its prompt's colour, as the
    random-weight and the first trained weights did, fails."""
    import torch

    from training.toy_world import evaluate

    torch.set_num_threads(1)
    pipe, vae = evaluate.load(str(SHAPES))
    s = json.loads((ROOT / "training" / "toy_world" / "recommended.json").read_text())
    evaluate.set_shift(pipe, s["flow_shift"])
    right = 0
    for i in range(10):
        rng = np.random.default_rng(FRESH + 200 + i)
        objs, bg = world.random_scene(rng, 1)
        prompt = world.canonical_prompt(objs, bg)
        frames = evaluate.generate(pipe, vae, prompt, FRESH + 300 + i, s)
        right += world.judge(world.analyze(frames, prompt), prompt)["objects"][0]["colour"]
    assert right >= 6, f"{right} of 10 in the colour asked for"
