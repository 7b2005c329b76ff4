"""Every conditioned path on its tiny model, called directly (no Ray): the sample stage reads the row's image (or
clip) by URI, and its split sample/decode gives the pixels of the diffusers pipeline's own call with the same
image, prompt and seed; batching a conditioned row with text rows never changes either; diffusion forcing starts
a long video from an image or continues a clip with exactly the latents of diffusers' own pipelines, and resumes
from its saved segments."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stages.common.variant import sampling_params
from stages.contract import ModelSpec, RunContext
from stages.decode import DecodeOptions, DecodeStage
from stages.media.conditioning import Target, load, probe
from stages.models.checkpoints import resolve_model_path
from stages.models.families import family_for
from stages.sample import SampleOptions, SampleStage

pytestmark = pytest.mark.timeout(600)
PROMPT = "a glass bottle turns on a table"

# family, builtin, the pipeline class of the reference call, columns, conditioning strength
CASES = [
    ("wan", "builtin:tiny-wan-i2v", "WanImageToVideoPipeline", ("image",), None),
    ("wan", "builtin:tiny-wan-flf2v", "WanImageToVideoPipeline", ("image", "last_image"), None),
    ("wan", "builtin:tiny-wan22-i2v", "WanImageToVideoPipeline", ("image", "last_image"), None),
    ("wan", "builtin:tiny-wan22-ti2v", "WanImageToVideoPipeline", ("image",), None),  # the T2V checkpoint takes it
    ("ltx", "builtin:tiny-ltx", "LTXImageToVideoPipeline", ("image",), None),
    ("ltx", "builtin:tiny-ltx", "LTXConditionPipeline", ("image", "last_image"), 0.9),
    ("ltx", "builtin:tiny-ltx", "LTXConditionPipeline", ("video",), None),  # continues the clip's last 9 frames
    ("cogvideox", "builtin:tiny-cogvideox-i2v", "CogVideoXImageToVideoPipeline", ("image",), None),
    ("skyreels", "builtin:tiny-skyreels-i2v", "SkyReelsV2ImageToVideoPipeline", ("image",), None),
]
IDS = [f"{path.removeprefix('builtin:')}-{'+'.join(cols)}" for _, path, _, cols, _ in CASES]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(3)
    out = {}
    for name, size in (("image", (96, 72)), ("last_image", (80, 80))):  # other shapes than the video's: cropped
        a = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), np.uint8)
        Image.fromarray(a).resize(size, Image.Resampling.NEAREST).save(folder / f"{name}.png")
        out[name] = str(folder / f"{name}.png")
    from tests.stages.test_conditioning import mp4

    (folder / "clip.mp4").write_bytes(mp4(13))
    out["video"] = str(folder / "clip.mp4")
    return out


def row(pictures, columns, strength=None, i=0, **kw):
    frames = 17 if "video" in columns else 9  # LTX continues a clip from the first half of the video: 9 frames
    r = dict(id=f"r{i}", status="pending", negative_prompt="blurry", height=64, width=64, num_frames=frames,
             num_inference_steps=2, guidance_scale=5.0, expanded_prompt=PROMPT, seed=10 + i, stage_seconds={},
             conditioning_resize="crop", conditioning_strength=strength, fps=8)
    for c in columns:
        r.update({c: pictures[c], f"{c}_sha256": probe(c, pictures[c]).sha256})
    return {**r, **kw}


def stages_for(family, path, batch_size=1):
    ctx = RunContext(model=ModelSpec(family=family, path=path))
    sample = SampleStage(SampleOptions(batch_size=batch_size, resources={"num_gpus": 0}), ctx)
    decode = DecodeStage(DecodeOptions(resources={"num_gpus": 0}), ctx)
    sample.setup()
    decode.setup()
    return sample, decode


@pytest.mark.parametrize("family,path,reference,columns,strength", CASES, ids=IDS)
def test_split_sample_decode_matches_the_pipelines_own_call(pictures, family, path, reference, columns, strength):
    import diffusers

    fam = family_for(family)
    sample, decode = stages_for(family, path)
    if family == "ltx":  # the pipeline draws its decode noise from the sampling generator: compare without it
        noise, fam.decode_noise_scale = fam.decode_noise_scale, 0.0
    try:
        r = sample([row(pictures, columns, strength)])[0]
        assert r["status"] == "pending", r.get("error")
        assert type(sample.pipe._rushes_conditioned[reference]).__name__ == reference
        frames = decode([dict(r)])[0]["frames"].array
    finally:
        if family == "ltx":
            fam.decode_noise_scale = noise
    n = r["num_frames"]
    assert frames.shape == (n, 64, 64, 3) and frames.dtype == np.uint8

    pipe = getattr(diffusers, reference).from_pretrained(resolve_model_path(path))
    pipe.set_progress_bar_config(disable=True)
    images = {c: load(c, pictures[c], probe(c, pictures[c]).sha256, Target(64, 64), last_frames=9) for c in columns}
    if reference == "LTXConditionPipeline":
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        extra = {"conditions": [LTXVideoCondition(video=images["video"], frame_index=0, strength=1.0)]
                 if "video" in images else
                 [LTXVideoCondition(image=images["image"], frame_index=0, strength=strength),
                  LTXVideoCondition(image=images["last_image"], frame_index=8, strength=strength)]}
    else:
        extra = dict(images)
    extra.update(fam.call_kwargs(pipe, sampling_params(r)))
    if family == "ltx":
        extra.update(decode_timestep=fam.decode_timestep, decode_noise_scale=0.0)
    video = pipe(prompt=PROMPT, negative_prompt="blurry", height=64, width=64, num_frames=n, num_inference_steps=2,
                 guidance_scale=5.0, generator=torch.Generator().manual_seed(10), output_type="np", **extra).frames[0]
    reference_frames = (np.asarray(video) * 255).round().astype(np.int16)
    diff = np.abs(frames.astype(np.int16) - reference_frames)
    # as tests/stages/test_families.py: float rounding of the split decode, a few levels on a few pixels at most
    assert diff.max() <= 4 and diff.mean() < 0.1, (diff.max(), diff.mean())


@pytest.mark.parametrize("path", ["builtin:tiny-wan22-ti2v", "builtin:tiny-ltx"])
def test_a_conditioned_row_batched_with_text_rows_keeps_its_latents(pictures, path):
    """TI2V-5B and LTX take text rows and image rows in one job: one batch of both gives each row the latents it
    gets alone (the image row has its own pipeline call)."""
    family = "wan" if "wan" in path else "ltx"
    sample, _ = stages_for(family, path, batch_size=3)
    batch = [row(pictures, (), i=0), row(pictures, ("image",), i=1), row(pictures, (), i=2)]
    together = sample([dict(r, stage_seconds={}) for r in batch])
    alone = [sample([dict(r, stage_seconds={})])[0] for r in batch]
    for a, b in zip(together, alone):
        assert a["status"] == b["status"] == "pending", (a.get("error"), b.get("error"))
        np.testing.assert_array_equal(a["latents"], b["latents"])
    assert not np.array_equal(together[0]["latents"], together[1]["latents"])


def test_a_changed_file_fails_its_variant_in_the_worker(pictures, tmp_path):
    moved = tmp_path / "image.png"
    Image.open(pictures["image"]).save(moved)
    r = row({"image": str(moved)}, ("image",))
    Image.new("RGB", (10, 10)).save(moved)  # changed after planning
    sample, _ = stages_for("wan", "builtin:tiny-wan-i2v")
    out = sample([r])[0]
    assert out["status"] == "failed" and "image: " + str(moved) in out["error"]
    assert "changed since the run was planned" in out["error"]


# --- diffusion forcing: a long video from an image, or continuing a clip -----------------------------------

DF = "builtin:tiny-skyreels-df"
LONG = dict(height=32, width=32, num_frames=33, num_inference_steps=2, guidance_scale=5.0, fps=8,
            base_num_frames=17, overlap_history=9, ar_step=0, addnoise_condition=0.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from tests.stages.test_conditioning import mp4

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    path.write_bytes(mp4(13))
    return str(path)


@pytest.mark.parametrize("column", ["image", "video"])
def test_diffusion_forcing_from_an_image_or_a_clip_equals_diffusers_own(pictures, clip, column, tmp_path):
    import diffusers

    fam = family_for("skyreels_df")
    source = {"image": pictures["image"], "video": clip}[column]
    sha = probe(column, source).sha256
    r = dict(row({}, ()), **LONG, **{column: source, f"{column}_sha256": sha}, params_hash="c" * 64, variant=0)
    ctx = RunContext(output=str(tmp_path / "out"), model=ModelSpec(family="skyreels_df", path=DF))
    sample = SampleStage(SampleOptions(resources={"num_gpus": 0}), ctx)
    sample.setup()
    ours = sample([dict(r, stage_seconds={})])[0]
    assert ours["status"] == "pending", ours.get("error")
    assert ours["latents"].shape == (16, 9, 4, 4)
    store = sample.variant_input(dict(r)).segments
    assert len(store.load()) == 3  # three windows, each saved

    kind = {"image": "ImageToVideo", "video": "VideoToVideo"}[column]
    pipe = getattr(diffusers, f"SkyReelsV2DiffusionForcing{kind}Pipeline").from_pretrained(resolve_model_path(DF))
    pipe.set_progress_bar_config(disable=True)
    given = load(column, source, sha, Target(32, 32), last_frames=9)
    with torch.no_grad():
        e = fam.encode_one(pipe, PROMPT, "blurry", True, "cpu")
    theirs = pipe(prompt_embeds=e["prompt_embeds"], negative_prompt_embeds=e["negative_prompt_embeds"],
                  output_type="latent", generator=torch.Generator("cpu").manual_seed(10), **{column: given},
                  **{k: v for k, v in LONG.items() if k != "addnoise_condition"}, addnoise_condition=0).frames[0]
    np.testing.assert_array_equal(ours["latents"], theirs.float().numpy())

    # resumed from the first saved segment, the video is the same
    first = store.load()[0]
    store.remove()
    store.save(0, first["latents"], generator=first["generator"])
    again = sample([dict(r, stage_seconds={})])[0]
    np.testing.assert_array_equal(again["latents"], ours["latents"])
