"""Long rows without Ray: builtin:tiny-skyreels-df extended window by window, its segments saved and resumed,
lengths from durations, and the refusal of families that cannot extend."""
import numpy as np
import pytest
import torch

from stages.contract import ModelSpec, RunContext
from stages.models.checkpoints import resolve_model_path
from stages.models.families import family_for
from stages.long_video.segments import SegmentStore
from stages.long_video.windows import frames_for, segment_plan
from stages.sample import SampleOptions, SampleStage
from tests.planning import sample

pytestmark = pytest.mark.timeout(300)

DF = "builtin:tiny-skyreels-df"
# 33 frames at the tiny window of 17 with 9 of overlap: 3 windows of 5, 4 and 4 latent frames (9 in all)
SETTINGS = dict(height=32, width=32, num_frames=33, num_inference_steps=2, guidance_scale=5.0, fps=8,
                base_num_frames=17, overlap_history=9, ar_step=0)


@pytest.fixture(scope="module")
def pipe():
    fam = family_for("skyreels_df")
    return fam, fam.load_pipeline(resolve_model_path(DF), "cpu", ModelSpec(family="skyreels_df", path=DF))


def test_segment_plan_is_the_pipelines():
    assert segment_plan(17, 17, 9) == [5]  # fits one window
    assert segment_plan(33, 17, 9) == [5, 5, 5]  # 5 latent frames, then 2 new after 3 of overlap, twice
    assert segment_plan(29, 17, 9) == [5, 5, 4]  # the last window makes what is left
    # 60 s at 24 fps on SkyReels-V2-DF-540P (window 97, overlap 17): 361 latent frames in 18 windows
    plan = segment_plan(frames_for(60, 24), 97, 17)
    assert len(plan) == 18 and plan[0] + sum(w - 5 for w in plan[1:]) == 361


def test_frames_for_a_duration():
    assert frames_for(60, 24) == 1441
    assert frames_for(4, 8) == 33
    assert frames_for(3.9, 8) == 33  # 31.2 frames: the fewest on 4k+1 that hold them
    assert frames_for(0.01, 8) == 5


def test_windows_equal_the_pipelines_own_long_video(pipe):
    """Without prefix noise (whose draws the pipeline takes from torch's global generator), the window-by-window
    loop gives exactly the latents of diffusers' own long-video call."""
    fam, p = pipe
    ours = sample(fam, p, ["a red fox runs"], [""], [7], **{**SETTINGS, "addnoise_condition": 0.0})[0]
    with torch.no_grad():  # as the pipeline encodes (SDPA picks another kernel when autograd is on)
        e = fam.encode_one(p, "a red fox runs", "", True, "cpu")
    theirs = p(prompt=None, prompt_embeds=e["prompt_embeds"], negative_prompt_embeds=e["negative_prompt_embeds"],
               height=32, width=32, num_frames=33, num_inference_steps=2, guidance_scale=5.0, fps=8, base_num_frames=17,
               overlap_history=9, addnoise_condition=0, ar_step=0, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(7)).frames[0].numpy()
    assert ours.shape == (16, 9, 4, 4)
    np.testing.assert_array_equal(ours, theirs)


def test_segments_are_saved_and_a_resumed_video_is_the_same(pipe, tmp_path):
    fam, p = pipe
    settings = {**SETTINGS, "addnoise_condition": 20.0}
    whole = sample(fam, p, ["a lighthouse"], [""], [3], **settings)[0]
    store = SegmentStore(str(tmp_path), "r1", 0, "ab" * 32)
    first = sample(fam, p, ["a lighthouse"], [""], [3], segments=[store], **settings)[0]
    np.testing.assert_array_equal(first, whole)
    assert store.saved == 3 and [s["latents"].shape[1] for s in store.load()] == [5, 2, 2]
    # the worker dies after two segments: a new one makes only the third
    (tmp_path / "segments/r1/0" / ("ab" * 8) / "0002.npz").unlink()
    resumed_store = SegmentStore(str(tmp_path), "r1", 0, "ab" * 32)
    resumed = sample(fam, p, ["a lighthouse"], [""], [3], segments=[resumed_store], **settings)[0]
    assert resumed_store.saved == 1
    np.testing.assert_array_equal(resumed, whole)


def test_sample_stage_hands_the_family_a_store_per_row(tmp_path):
    ctx = RunContext(run_id="r", output=str(tmp_path), model=ModelSpec(family="skyreels_df", path=DF))
    stage = SampleStage(SampleOptions(resources={"num_gpus": 0}), ctx)
    stage.pipe = stage.family.load_pipeline(resolve_model_path(DF), "cpu", stage.ctx.model)
    v = stage.variant_input({"id": "a", "variant": 0, "params_hash": "f" * 64, "expanded_prompt": "a cat",
                             "negative_prompt": "", "seed": 1})
    assert v.segments.folder.endswith("segments/a/0/" + "f" * 16)


def test_families_that_cannot_extend_refuse_long_rows_naming_their_window():
    wan = family_for("wan")
    assert wan.check_length({"num_frames": 81}, "builtin:tiny-wan") is None
    msg = wan.check_length({"num_frames": 1441}, "builtin:tiny-wan")
    assert "family 'wan'" in msg and "window of 81 frames" in msg and "cannot extend" in msg
    assert "window of 49 frames" in family_for("cogvideox").check_length({"num_frames": 97}, None)
    assert "does not extend" in wan.check_length({"num_frames": 17, "overlap_history": 17}, None)
    df = family_for("skyreels_df")
    ok = {"num_frames": 1441, "base_num_frames": 97, "overlap_history": 17}
    assert df.check_length(ok, None) is None
    assert "overlap_history: required" in df.check_length({**ok, "overlap_history": None}, None)
    assert "base_num_frames: must be 4*k+1" in df.check_length({**ok, "base_num_frames": 96}, None)
    assert "must leave new frames" in df.check_length({**ok, "overlap_history": 97}, None)


def test_shot_prompts_are_cut_to_the_encoders_budget_and_the_record_says_so(tmp_path):
    ctx = RunContext(run_id="r", output=str(tmp_path), model=ModelSpec(family="skyreels_df", path=DF))
    stage = SampleStage(SampleOptions(resources={"num_gpus": 0}), ctx)
    stage.setup()
    budget = stage.family.max_sequence_length
    long_shot = "a lighthouse keeper climbs the stairs " * 200
    shots = [{"prompt": "a harbour at dawn", "duration_s": 1.0, "expanded_prompt": "a harbour at dawn, mist",
              "first_frame": None, "end_frame": None},
             {"prompt": "the keeper climbs", "duration_s": 1.0, "expanded_prompt": long_shot,
              "first_frame": None, "end_frame": None}]
    row = {"id": "a", "variant": 0, "params_hash": "f" * 64, "expanded_prompt": "a harbour", "shots": shots,
           "negative_prompt": "", "seed": 1}
    read = stage.variant_input(row).shots
    tokenizer = stage.pipe.tokenizer
    assert read[0]["expanded_prompt"] == "a harbour at dawn, mist"
    assert len(tokenizer(read[1]["expanded_prompt"])["input_ids"]) <= budget < len(tokenizer(long_shot)["input_ids"])
    assert read[1]["expanded_prompt"] and long_shot.startswith(read[1]["expanded_prompt"].strip()[:30])
    assert row["truncated"] is True and row["prompt_tokens"] == len(tokenizer(long_shot)["input_ids"])
    assert row["shots"][1]["expanded_prompt"] == long_shot  # the record keeps the shot as it was written
