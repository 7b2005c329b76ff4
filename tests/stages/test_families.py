"""Every built-in family on its tiny model, called directly (no Ray): latent layouts, batch invariance, the
split decode against the pipeline's own, and shape rules that raise and name the rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.variant import SamplingParams
from stages.contract import ModelSpec, RunContext
from stages.models.checkpoints import resolve_model_path
from stages.decode import DecodeOptions, DecodeStage
from stages.models.families import FAMILIES, family_for
from stages.sample import SampleOptions, SampleStage

# family, builtin, the per-variant latent shape at 64x64, 9 frames (each family's own layout)
MODELS = [
    ("wan", "builtin:tiny-wan", (16, 3, 8, 8)),
    ("wan", "builtin:tiny-wan22", (16, 3, 8, 8)),
    ("wan", "builtin:tiny-wan22-ti2v", (48, 3, 4, 4)),  # 48 channels, 16x VAE
    ("skyreels", "builtin:tiny-skyreels", (16, 3, 8, 8)),
    ("ltx", "builtin:tiny-ltx", (8, 2, 2, 2)),  # unpacked from (seq, C); 32x / 8x compression
    ("cogvideox", "builtin:tiny-cogvideox", (3, 4, 8, 8)),  # (F', C, H', W')
    ("hunyuan", "builtin:tiny-hunyuan", (4, 3, 8, 8)),
]
IDS = [path.removeprefix("builtin:") for _, path, _ in MODELS]
PROMPTS = ["a cat on a beach", "a red car at night", "a robot arm in a warehouse"]


def rows(n=2, **kw):
    base = dict(status="pending", negative_prompt="blurry", height=64, width=64, num_frames=9,
                num_inference_steps=2, guidance_scale=5.0)
    return [dict(base, id=f"r{i}", expanded_prompt=PROMPTS[i], seed=10 + i, stage_seconds={}, **kw)
            for i in range(n)]


def sampler(family, path, batch_size):
    stage = SampleStage(SampleOptions(batch_size=batch_size, resources={"num_gpus": 0}),
                        RunContext(model=ModelSpec(family=family, path=path)))
    return stage


@pytest.fixture(scope="module", params=MODELS, ids=IDS)
def model(request):
    family, path, shape = request.param
    stage = sampler(family, path, batch_size=3)
    stage.setup()
    return family, path, shape, stage


def test_latents_have_the_familys_layout_and_batching_never_changes_them(model):
    family, path, shape, batched = model
    out = batched(rows(3))
    assert batched.calls == 1 or batched.calls > 0
    for r in out:
        assert r["status"] == "pending", r.get("error")
        assert r["latents"].shape == shape and r["latents"].dtype == np.float32
    assert not np.array_equal(out[0]["latents"], out[1]["latents"])
    single = sampler(family, path, batch_size=1)
    single.pipe = batched.pipe
    alone = [single(rows(3)[i:i + 1])[0] for i in range(3)]
    assert single.calls == 3
    for a, b in zip(out, alone):
        np.testing.assert_array_equal(a["latents"], b["latents"])


def test_split_decode_matches_the_pipelines_own_decode(model):
    """Sampling to latents and decoding in another stage gives the pixels the whole pipeline gives."""
    family, path, _, stage = model
    fam = family_for(family)
    r = stage(rows(1))[0]
    decoder = DecodeStage(DecodeOptions(resources={"num_gpus": 0}), RunContext(model=ModelSpec(family=family, path=path)))
    decoder.setup()
    frames = decoder([dict(r)])[0]["frames"].array
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8

    import diffusers

    pipe = getattr(diffusers, fam.pipeline_class).from_pretrained(resolve_model_path(path))
    pipe.set_progress_bar_config(disable=True)
    extra = fam.call_kwargs(pipe, SamplingParams())
    if family == "ltx":  # the pipeline draws its decode noise from the sampling generator: compare without it
        extra.update(decode_timestep=fam.decode_timestep, decode_noise_scale=0.0)
        fam_noise, fam.decode_noise_scale = fam.decode_noise_scale, 0.0
    try:
        if family == "ltx":
            frames = decoder([dict(stage(rows(1))[0])])[0]["frames"].array
        video = pipe(prompt=PROMPTS[0], negative_prompt="blurry", height=64, width=64, num_frames=9,
                     num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(10),
                     output_type="np", **extra).frames[0]
    finally:
        if family == "ltx":
            fam.decode_noise_scale = fam_noise
    reference = (np.asarray(video) * 255).round().astype(np.int16)
    # The pipeline encodes the prompt in a batch of one too; what differs is float rounding (the pipeline
    # divides by 1/std where decode multiplies by std; uint8 from [0, 1] vs [-1, 1]): at most a few levels
    # on a few pixels (TI2V's residual VAE amplifies it most: max 3 levels measured).
    diff = np.abs(frames.astype(np.int16) - reference)
    assert diff.max() <= 4 and diff.mean() < 0.1, (diff.max(), diff.mean())


@pytest.mark.parametrize("family,shape,rule", [
    ("wan", (64, 64, 10), "num_frames must be 4*k+1"),
    ("wan", (72, 64, 9), "height must be a multiple of 16"),
    ("skyreels", (64, 72, 9), "width must be a multiple of 16"),
    ("ltx", (64, 64, 13), "num_frames must be 8*k+1"),
    ("ltx", (80, 64, 9), "height must be a multiple of 32"),
    ("cogvideox", (64, 64, 11), "num_frames must be 4*k+1"),
    ("hunyuan", (64, 40, 9), "width must be a multiple of 16"),
])
def test_shape_rules_raise_and_name_the_rule(family, shape, rule):
    problem = family_for(family).check_shape(*shape)
    assert problem is not None and rule in problem and f"family '{family}'" in problem
    assert family_for(family).check_shape(64, 64, 17 if family != "ltx" else 9) is None


def test_ti2v_rule_read_from_its_checkpoint():
    path = "builtin:tiny-wan22-ti2v"
    resolve_model_path(path)
    assert FAMILIES["wan"].check_shape(48, 64, 9, path=path) == "height must be a multiple of 32 for family 'wan', got 48"
    assert FAMILIES["wan"].check_shape(48, 64, 9, path="builtin:tiny-wan22") is None


def test_a_job_file_names_every_family():
    from pipeline.spec import load_job

    for family, path, _ in MODELS:
        spec = load_job({"manifest": "m.parquet", "output": "out", "model": {"family": family, "path": path},
                         "sampling": {"height": 64, "width": 64, "num_frames": 9}})
        assert spec.model.family == family
    with pytest.raises(ValueError, match="num_frames must be 8\\*k\\+1"):
        load_job({"manifest": "m.parquet", "output": "out", "model": {"family": "ltx", "path": "builtin:tiny-ltx"},
                  "sampling": {"height": 64, "width": 64, "num_frames": 17 + 4}})


def test_unset_settings_take_the_familys_recommendation_and_rows_record_them():
    from pipeline.spec import load_job

    def defaults(model, **sampling):
        return load_job({"manifest": "m", "output": "o", "model": model, "sampling": sampling}).sampling_defaults()

    tiny = defaults({"family": "wan"})
    assert {k: tiny[k] for k in ("height", "width", "num_frames", "fps", "num_inference_steps", "guidance_scale")} \
        == dict(height=96, width=160, num_frames=17, fps=8, num_inference_steps=4, guidance_scale=5.0)
    assert tiny["guidance_scale_2"] is None and tiny["flow_shift"] is None
    assert defaults({"family": "wan", "path": "builtin:tiny-wan22"})["guidance_scale_2"] == 3.0
    wan21 = defaults({"family": "wan", "path": "Wan-AI/Wan2.1-T2V-14B-Diffusers"})
    assert (wan21["num_frames"], wan21["fps"], wan21["num_inference_steps"], wan21["flow_shift"]) == (81, 16, 50, 3.0)
    a14b = defaults({"family": "wan", "path": "Wan-AI/Wan2.2-T2V-A14B-Diffusers"})
    assert (a14b["guidance_scale"], a14b["guidance_scale_2"], a14b["num_inference_steps"]) == (4.0, 3.0, 40)
    assert defaults({"family": "wan", "path": "Wan-AI/Wan2.2-TI2V-5B-Diffusers"})["height"] == 704
    ltx = defaults({"family": "ltx", "path": "Lightricks/LTX-Video"}, num_inference_steps=8)
    assert (ltx["num_frames"], ltx["fps"], ltx["guidance_scale"], ltx["num_inference_steps"]) == (161, 25, 3.0, 8)
    assert defaults({"family": "cogvideox", "path": "THUDM/CogVideoX-5b"})["guidance_scale"] == 6.0
    assert defaults({"family": "hunyuan", "path": "hunyuanvideo-community/HunyuanVideo"})["flow_shift"] == 7.0
    assert defaults({"family": "skyreels", "path": "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers"})["height"] == 544
    assert load_job({"manifest": "m", "output": "o", "model": {"family": "ltx"}}).model.path == "builtin:tiny-ltx"


def test_settings_a_family_cannot_use_are_errors():
    from pipeline.spec import JobSpecError, load_job

    with pytest.raises(JobSpecError, match="guidance_scale_2: only a two-expert model"):
        load_job({"manifest": "m", "output": "o", "model": {"family": "wan"}, "sampling": {"guidance_scale_2": 2.0}})
    with pytest.raises(JobSpecError, match="flow_shift: family 'cogvideox' has no flow shift"):
        load_job({"manifest": "m", "output": "o", "model": {"family": "cogvideox"}, "sampling": {"flow_shift": 5.0}})


def test_tiny_wan_params_hash_unchanged_by_the_new_optional_settings():
    """The optional settings stay out of params_hash while unset, so tiny-wan libraries made before them skip."""
    import hashlib
    import json

    from stages.common.variant import HASH_IF_SET, PIXEL_FIELDS, params_hash

    v = dict(expanded_prompt="a cat", negative_prompt="", seed=1, height=96, width=160, num_frames=17, fps=8,
             num_inference_steps=4, guidance_scale=5.0, guidance_scale_2=None, flow_shift=None)
    old = {k: v[k] for k in PIXEL_FIELDS if k not in HASH_IF_SET}  # the fields before families' settings
    blob = json.dumps({"model": "m", **old}, sort_keys=True, separators=(",", ":"), default=str)
    assert params_hash({"model": "m"}, v) == hashlib.sha256(blob.encode()).hexdigest()
    assert params_hash({"model": "m"}, dict(v, flow_shift=5.0)) != params_hash({"model": "m"}, v)


def test_wan22_second_guidance_and_flow_shift_change_the_latents():
    stage = sampler("wan", "builtin:tiny-wan22", batch_size=1)
    stage.setup()
    base = stage(rows(1, guidance_scale_2=3.0))[0]["latents"]
    assert np.array_equal(base, stage(rows(1, guidance_scale_2=3.0))[0]["latents"])
    assert not np.array_equal(base, stage(rows(1, guidance_scale_2=1.5))[0]["latents"])
    shifted = stage(rows(1, guidance_scale_2=3.0, flow_shift=3.0))[0]["latents"]
    assert not np.array_equal(base, shifted)
    # the shift is set per call: the next variant without one gets the checkpoint's scheduler again
    assert np.array_equal(base, stage(rows(1, guidance_scale_2=3.0))[0]["latents"])


def test_ltx_decode_noise_is_seeded_by_the_variant():
    """LTX's timestep-conditioned VAE decodes with noise: the variant's seed makes it, so a decode repeats."""
    fam = family_for("ltx")
    vae = fam.load_vae(resolve_model_path("builtin:tiny-ltx"), "float32", "cpu")
    z = np.random.default_rng(0).standard_normal((8, 2, 2, 2)).astype(np.float32)
    a, _ = fam.decode(vae, z, seed=1)
    np.testing.assert_array_equal(a, fam.decode(vae, z, seed=1)[0])
    assert not np.array_equal(a, fam.decode(vae, z, seed=2)[0])


def test_hunyuan_true_cfg_runs_the_negative_prompt_as_the_pipeline_does():
    """true_cfg_scale above 1 adds HunyuanVideo's negative pass: the latents equal the pipeline's own call with
    the same negative prompt and scale, batching still never changes them, and unset it is off."""
    import diffusers

    stage = sampler("hunyuan", "builtin:tiny-hunyuan", batch_size=2)
    stage.setup()
    off = stage(rows(1))[0]["latents"]
    two = stage(rows(2, true_cfg_scale=4.0))
    on = two[0]["latents"]
    assert not np.allclose(on, off, atol=1e-4)
    np.testing.assert_array_equal(stage(rows(1, true_cfg_scale=4.0))[0]["latents"], on)  # alone = batched
    negative = stage(rows(1, true_cfg_scale=4.0, negative_prompt="a dark empty room"))[0]["latents"]
    assert not np.allclose(negative, on, atol=1e-4)  # the negative prompt now matters

    pipe = diffusers.HunyuanVideoPipeline.from_pretrained(resolve_model_path("builtin:tiny-hunyuan"))
    pipe.set_progress_bar_config(disable=True)
    own = pipe(prompt=PROMPTS[0], negative_prompt="blurry", true_cfg_scale=4.0, height=64, width=64, num_frames=9,
               num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(10),
               output_type="latent").frames[0]
    np.testing.assert_allclose(on, own.float().numpy(), atol=1e-5)


def test_true_cfg_is_refused_for_families_that_run_cfg_already():
    from pipeline.spec import JobSpecError, load_job

    with pytest.raises(JobSpecError, match="true_cfg_scale: family 'wan' already runs classifier-free guidance"):
        load_job({"manifest": "m", "output": "o", "model": {"family": "wan"}, "sampling": {"true_cfg_scale": 4.0}})
    spec = load_job({"manifest": "m", "output": "o", "model": {"family": "hunyuan"}, "sampling": {"true_cfg_scale": 4.0}})
    assert spec.sampling_defaults()["true_cfg_scale"] == 4.0
