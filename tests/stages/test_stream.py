"""Long videos streamed through decode, filter and encode a segment at a time (stages/long_video/stream.py), without Ray."""
import io
from pathlib import Path

import av
import numpy as np
import pytest

from stages.contract import ModelSpec, RunContext
from stages.models.checkpoints import resolve_model_path
from stages.encode import EncodeOptions
from stages.models.families import family_for
from stages.media.quality import frame_metrics
from stages.long_video.segments import store_for
from stages.long_video.stream import encode_stream, stream_metrics, write_chunks
from stages.long_video.windows import segment_frames
from stages.media.frames import FrameChunks
from tests.planning import planned

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def vae():
    fam = family_for("skyreels_df")
    return fam, fam.load_vae(resolve_model_path("builtin:tiny-skyreels-df"), "float32", "cpu")


def test_segment_frame_ranges():
    row = {"num_frames": 33, "fps": 8, "base_num_frames": 17, "overlap_history": 9}
    # tiny: window 17, overlap 9 -> 3 latent frames of overlap; 33 frames = 17 + 8 + 8
    assert segment_frames(row) == [(0, 17), (17, 25), (25, 33)]
    # SkyReels-V2-DF 540P, a minute: 97 frames, then 80 per window
    bounds = segment_frames({**row, "num_frames": 1441, "fps": 24, "base_num_frames": 97, "overlap_history": 17})
    assert bounds[0] == (0, 97) and bounds[1] == (97, 177) and bounds[-1][1] == 1441 and len(bounds) == 18
    assert all(a == b for (_, a), (b, _) in zip(bounds, bounds[1:]))
    # a storyboard of 1 s + 2 s at 8 fps: 9 frames, then 16 in two windows of at most 8 new frames
    shots = [{"duration_s": 1.0}, {"duration_s": 2.0}]
    assert segment_frames({**row, "num_frames": 25, "shots": shots}) == [(0, 9), (9, 17), (17, 25)]


def test_causal_chunks_are_the_vaes_own_decode(vae):
    fam, v = vae
    latents = np.random.default_rng(0).standard_normal((16, 9, 4, 4)).astype(np.float32)
    whole, _ = fam.decode(v, latents)
    chunks = [f for f, _ in fam.decode_chunks(v, latents)]
    assert [len(c) for c in chunks] == [1] + [4] * 8
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_a_streamed_row_decodes_filters_and_encodes_a_segment_at_a_time(vae, tmp_path):
    fam, v = vae
    latents = np.random.default_rng(1).standard_normal((16, 9, 4, 4)).astype(np.float32)
    ctx = RunContext(output=str(tmp_path), model=ModelSpec(family="skyreels_df"))
    r = {"id": "a", "variant": 0, "params_hash": "c" * 64, "num_frames": 33, "fps": 8, "base_num_frames": 17,
         "overlap_history": 9}
    store = store_for(ctx, r)
    frames, finite = write_chunks(fam.decode_chunks(v, latents), segment_frames(r), store.fs, store.folder)
    assert finite and frames.bounds == [(0, 17), (17, 25), (25, 33)] and len(frames.uris) == 3
    whole, _ = fam.decode(v, latents)
    parts = [np.load(Path(u.removeprefix("file://"))) for u in frames.uris]
    np.testing.assert_array_equal(np.concatenate(parts), whole)

    metrics, phash, cuts = stream_metrics(r, frames, 8.0)
    reference, ref_phash, _ = frame_metrics(whole, 8.0)
    assert phash == ref_phash
    for name in ("brightness", "contrast", "black_fraction", "clipped_low", "clipped_high"):
        assert metrics[name] == pytest.approx(reference[name], rel=1e-6, abs=1e-9), name
    assert {f"segment_{k}/motion" for k in range(3)} <= set(metrics)
    assert metrics["segment_1/brightness"] == pytest.approx(frame_metrics(whole[17:25], 8.0)[0]["brightness"])

    out = encode_stream(r, frames, EncodeOptions(preset="ultrafast"), {"comment": "x"})
    with av.open(io.BytesIO(out["video_bytes"])) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 33
    assert out["duration_s"] == pytest.approx(33 / 8) and out["poster_bytes"] and out["preview_bytes"]
    assert not any(Path(u.removeprefix("file://")).exists() for u in frames.uris)  # chunks removed


def test_a_cut_on_a_segment_boundary_is_found(tmp_path):
    rng = np.random.default_rng(2)
    a = np.full((8, 32, 32, 3), 60, np.uint8) + rng.integers(0, 3, (8, 32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[:, :16] = 200  # a different picture from frame 8 on: a cut exactly at the boundary
    paths = []
    for k, chunk in enumerate((a, b)):
        paths.append(str(tmp_path / f"{k}.npy"))
        np.save(paths[-1], chunk)
    r = {"num_frames": 16}
    _, _, cuts = stream_metrics(r, FrameChunks(paths, [(0, 8), (8, 16)]), 8.0)
    assert cuts == [8]


def test_a_cut_at_a_shot_boundary_is_expected_and_one_elsewhere_is_not(tmp_path):
    rng = np.random.default_rng(3)
    a = np.full((8, 32, 32, 3), 60, np.uint8) + rng.integers(0, 3, (8, 32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[:, :16] = 200
    paths = []
    for k, chunk in enumerate((a, b)):
        paths.append(str(tmp_path / f"{k}.npy"))
        np.save(paths[-1], chunk)
    shots = [{"first_frame": 0, "end_frame": 8}, {"first_frame": 8, "end_frame": 16}]
    r = {"num_frames": 16, "shots": shots}
    frames = FrameChunks(paths, [(0, 8), (8, 16)])
    metrics, _, cuts = stream_metrics(r, frames, 8.0)
    assert cuts == [] and metrics["scene_cuts"] == 0 and metrics["shot_cuts"] == 1
    shots = [{"first_frame": 0, "end_frame": 13}, {"first_frame": 13, "end_frame": 16}]  # a cut 5 frames off
    metrics, _, cuts = stream_metrics({**r, "shots": shots}, frames, 8.0)
    assert cuts == [8] and metrics["scene_cuts"] == 1 and metrics["shot_cuts"] == 0


def test_the_template_writes_every_shot_with_the_same_cast_and_style():
    from stages.expand import ExpandOptions, ExpandStage

    stage = ExpandStage(ExpandOptions(mode="template"))
    cast = "Ada, an old sailor with a white beard"
    shots = stage.storyboard(cast, [{"prompt": "Ada mends a net", "duration_s": 1.0},
                                    {"prompt": "Ada rows out at dusk", "duration_s": 2.0}], seed=7, style=None)
    first, second = (s["expanded_prompt"] for s in shots)
    assert first.startswith(cast + ". Ada mends a net") and second.startswith(cast + ". Ada rows out at dusk")
    assert first.rsplit(", ", 1)[-1] == second.rsplit(", ", 1)[-1]  # one draw: the same style in every shot
    none = ExpandStage(ExpandOptions(mode="none")).storyboard(cast, shots[:1], seed=7, style=None)
    assert none[0]["expanded_prompt"] == cast + ". Ada mends a net"


def test_the_llm_writes_every_shot_with_the_whole_storyboard_in_its_prompt():
    from stages.expand import ExpandOptions, ExpandStage
    from stages.models.rewriters import storyboard_request

    stage = ExpandStage(ExpandOptions(mode="llm", backend="local", model="builtin:tiny-qwen",
                                      resources={"num_gpus": 0}))
    cast = "Ada, an old sailor with a white beard"
    shots = [{"prompt": "Ada mends a net", "duration_s": 1.0, "expanded_prompt": None},
             {"prompt": "Ada rows out at dusk", "duration_s": 2.0, "expanded_prompt": None}]
    rows = planned(stage, [{"row": 0, "id": "s", "prompt": cast, "negative_prompt": "", "seed": 3, "num_variants": 2,
                            "style": None, "tags": [], "extra": {}, "shots": shots}])
    chat = stage.chat(storyboard_request(rows[0]["prompt"], rows[0]["shots"], 1), rows[0]["style"])[-1]["content"]
    assert cast in chat and "Shot 1: Ada mends a net" in chat and "Shot 2: Ada rows out at dusk" in chat
    assert "shot 2 only" in chat
    stage.setup()
    out = stage(rows)
    for r in out:
        assert all(s["expanded_prompt"] for s in r["shots"])
        for k, s in enumerate(r["shots"]):  # the model's own words, or (guard rails) the cast and the shot's
            if r["expand_error"] and f"shot {k + 1}:" in r["expand_error"]:
                assert s["expanded_prompt"] == f"{cast}. {s['prompt']}"
    assert shots[0]["expanded_prompt"] is None  # the manifest's list is not changed under other variants


def test_clip_scores_each_segment_against_its_shots_prompt(tmp_path):
    """A streamed video gets a CLIP score per segment, each against the prompt it was made from (a
    storyboard's shot), and an overall one: their mean weighted by frames."""
    from stages.models.clip_score import ClipScorer
    from stages.filter import FilterOptions, FilterStage

    rng = np.random.default_rng(4)
    chunks = [rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for n in (9, 8, 8)]
    paths = []
    for k, chunk in enumerate(chunks):
        paths.append(str(tmp_path / f"{k}.npy"))
        np.save(paths[-1], chunk)
    shots = [{"prompt": "a harbour", "expanded_prompt": "a harbour at dawn", "first_frame": 0, "end_frame": 9},
             {"prompt": "a keeper", "expanded_prompt": None, "first_frame": 9, "end_frame": 25}]
    row = {"id": "s", "variant": 0, "status": "pending", "prompt": "a story", "expanded_prompt": "a story",
           "num_frames": 25, "frames": FrameChunks(paths, [(0, 9), (9, 17), (17, 25)]), "shots": shots,
           "stage_seconds": {}}
    stage = FilterStage(FilterOptions(clip_model="builtin:tiny-clip", resources={"num_gpus": 0}),
                        RunContext(output=str(tmp_path)))
    stage.setup()
    out = stage([row])[0]
    scorer = ClipScorer("builtin:tiny-clip")
    expected = [scorer.score("a harbour at dawn", chunks[0]), scorer.score("a keeper", chunks[1]),
                scorer.score("a keeper", chunks[2])]
    for k in range(3):
        assert out["metrics"][f"segment_{k}/clip_score"] == pytest.approx(expected[k], rel=1e-5)
    assert out["metrics"]["clip_score"] == pytest.approx(np.average(expected, weights=[9, 8, 8]), rel=1e-5)
