"""The `null` model family: right shapes at once, deterministic per seed, Wan's shape rules."""
from __future__ import annotations

import numpy as np
import pytest

from stages.models.checkpoints import model_identity, resolve_model_path
from stages.models.families import FAMILIES, NullFamily, family_for
from stages.filter import FilterOptions, FilterStage
from stages.media.frames import FrameArray
from stages.media.quality import phash_distance
from stages.models.spec import ModelSpec
from tests import planning

SHAPE = dict(height=64, width=96, num_frames=9, num_inference_steps=2, guidance_scale=5.0)


def sample(seeds, **shape):
    pipe = NullFamily.load_pipeline("builtin:null", "cpu", ModelSpec(family="null"))
    return planning.sample(NullFamily, pipe, ["p"] * len(seeds), [""] * len(seeds), seeds, **{**SHAPE, **shape})


def test_registered_as_a_builtin_family():
    assert FAMILIES["null"] is NullFamily
    assert family_for("null") is NullFamily


def test_latents_and_frames_have_the_model_shapes():
    z = sample([1, 2, 3])
    assert z.shape == (3, 16, 3, 8, 12) and z.dtype == np.float32
    frames, finite = NullFamily.decode(NullFamily.load_vae("builtin:null", "float32", "cpu"), z[0])
    assert frames.shape == (9, 64, 96, 3) and frames.dtype == np.uint8
    assert finite
    z = sample([0], height=480, width=832, num_frames=81)
    assert z.shape == (1, 16, 21, 60, 104)


def test_same_seed_same_content_other_seed_other_content():
    a, b = sample([7, 8]), sample([7, 8])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    fa, _ = NullFamily.decode(None, a[0])
    fb, _ = NullFamily.decode(None, b[0])
    np.testing.assert_array_equal(fa, fb)


def test_frames_pass_the_default_filter_and_are_not_duplicates():
    rows = []
    for seed in range(6):
        frames, _ = NullFamily.decode(None, sample([seed])[0])
        rows.append({"status": "pending", "frames": FrameArray(frames), "stage_seconds": {}, "prompt": "p"})
    rows = FilterStage(FilterOptions())(rows)
    assert [r["status"] for r in rows] == ["accepted"] * 6, [r["reasons"] for r in rows]
    hashes = [r["phash"] for r in rows]
    assert min(phash_distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 24


def test_nonfinite_latents_are_reported():
    z = sample([1])[0]
    z[0, 0, 0, 0] = np.nan
    _, finite = NullFamily.decode(None, z)
    assert not finite


@pytest.mark.parametrize("shape, problem", [
    ((64, 64, 9), None), ((480, 832, 81), None),
    ((60, 64, 9), "height must be a multiple of 16 for family 'null', got 60"),
    ((64, 72, 9), "width must be a multiple of 16 for family 'null', got 72"),
    ((64, 64, 10), "num_frames must be 4*k+1"),
])
def test_check_shape_follows_wan(shape, problem):
    got = NullFamily.check_shape(*shape)
    assert got is None if problem is None else problem in got


def test_builtin_null_resolves_without_building_anything(monkeypatch):
    def build(_):
        raise AssertionError("builtin:null must not build a model")

    monkeypatch.setattr("stages.models.builtin.build_tiny_wan", build)
    assert resolve_model_path("builtin:null") == "builtin:null"
    ident = model_identity("null", "builtin:null", None, "float32")
    assert ident == {"family": "null", "path": "builtin:null", "revision": None, "dtype": "float32",
                     "weights_hash": "null-v1"}


def test_cpu_stages_and_the_pipeline_modules_do_not_import_torch():
    """Task workers (plan reading, filter, encode, object writes) import these modules; torch would cost
    each of them seconds of CPU and hundreds of MB."""
    import subprocess
    import sys

    code = ("import sys, pipeline.job, pipeline.graph, pipeline.plan, pipeline.cli, stages.filter, stages.encode, "
            "stages.write, stages.models.families, tests.planning; tests.planning.sample("
            "stages.models.families.family_for('null'), None, ['p'], [''], [1], height=16, width=16, "
            "num_frames=5, num_inference_steps=1, guidance_scale=1.0); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_wan_shape_rule_follows_the_checkpoint(tmp_path):
    """Wan2.2 TI2V-5B's VAE downsamples by 16, so its sizes are multiples of 32; Wan2.1's are of 16. The
    rule is read from the checkpoint's configs (here config-only folders in diffusers layout)."""
    import json

    from stages.models.families import WanFamily

    def checkpoint(name, vae, patch):
        for sub, config in (("vae", vae), ("transformer", {"patch_size": patch})):
            (tmp_path / name / sub).mkdir(parents=True)
            (tmp_path / name / sub / "config.json").write_text(json.dumps(config))
        return str(tmp_path / name)

    ti2v = checkpoint("ti2v-5b", {"z_dim": 48, "scale_factor_spatial": 16, "is_residual": True}, [1, 2, 2])
    wan21 = checkpoint("wan21", {"z_dim": 16}, [1, 2, 2])
    assert WanFamily.check_shape(704, 1280, 121, path=ti2v) is None
    assert WanFamily.check_shape(720, 1280, 121, path=ti2v) == "height must be a multiple of 32 for family 'wan', got 720"
    assert WanFamily.check_shape(720, 1280, 81, path=wan21) is None
    assert WanFamily.check_shape(720, 1280, 81, path="no/such/checkpoint") is None  # not on disk: Wan2.1's rule


def test_a_row_too_small_a_multiple_for_ti2v_is_invalid_naming_the_rule(tmp_path, make_manifest):
    import json

    from pipeline.manifest import Manifest, RowValidator
    from pipeline.spec import JobSpecError, load_job

    for sub, config in (("vae", {"z_dim": 48, "scale_factor_spatial": 16}), ("transformer", {"patch_size": [1, 2, 2]})):
        (tmp_path / "ti2v" / sub).mkdir(parents=True)
        (tmp_path / "ti2v" / sub / "config.json").write_text(json.dumps(config))
    path = make_manifest([{"id": "a", "prompt": "p", "width": 400}, {"id": "b", "prompt": "q", "width": 448}])
    job = {"manifest": path, "output": str(tmp_path / "o"), "model": {"path": str(tmp_path / "ti2v")},
           "sampling": {"height": 96, "width": 160}}
    spec = load_job(job)
    manifest = Manifest(path)
    out = RowValidator(spec, manifest.columns, {}).validate(next(manifest.batches()), 0)
    assert [r["id"] for r in out.valid] == ["b"]
    assert out.invalid[0]["error"] == "width must be a multiple of 32 for family 'wan', got 400"
    with pytest.raises(JobSpecError, match="sampling: height must be a multiple of 32 for family 'wan', got 240"):
        load_job({**job, "sampling": {"height": 240, "width": 416}})


def test_a_long_row_is_made_window_by_window_and_resumes_from_its_saved_segments(tmp_path):
    import os

    from stages.long_video.segments import SegmentStore

    long = dict(num_frames=17 + 8 * 2, base_num_frames=17, overlap_history=9)
    store = lambda: SegmentStore(str(tmp_path), "r", 0, "ab" * 32)  # noqa: E731
    first = store()
    z = sample([5], segments=[first], **long)
    assert z.shape == (1, 16, 5 + 2 + 2, 8, 12) and first.saved == 3  # three windows, each saved
    again = store()
    np.testing.assert_array_equal(sample([5], segments=[again], **long), z)
    assert again.saved == 0  # every window read back, none made again
    os.remove(again.path(2))
    resumed = store()
    np.testing.assert_array_equal(sample([5], segments=[resumed], **long), z)
    assert resumed.saved == 1
    chunks = list(NullFamily.decode_chunks(None, z[0]))
    frames, _ = NullFamily.decode(None, z[0])
    np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), frames)
    assert frames.shape[0] == 33 and [len(c) for c, _ in chunks][:3] == [1, 4, 4]


def test_long_rows_have_one_window_geometry():
    assert NullFamily.check_length({"num_frames": 41, "base_num_frames": 17, "overlap_history": 9}, None) is None
    assert "base_num_frames 17 and overlap_history 9" in NullFamily.check_length(
        {"num_frames": 41, "base_num_frames": 21, "overlap_history": 9}, None)
    assert NullFamily.check_length({"num_frames": 9, "shots": [{"prompt": "a"}]}, None).startswith("shots:")


def test_simulated_gpu_time_is_a_null_family_setting_in_seconds_or_from_a_profile():
    from stages.models.families.null import held
    from stages.models.simulation import SimulatedGpu

    sim = ModelSpec(family="null", simulate={"sample_s": 2.0, "decode_s": 0.5, "time_scale": 0.1}).simulate
    assert sim.held("sample") == pytest.approx(0.2) and sim.held("decode") == pytest.approx(0.05)
    assert sim.resolved() is sim  # seconds given: nothing to count
    model = ModelSpec(family="null", simulate={"sample_s": 2.0, "decode_s": 0.5, "time_scale": 0.1})
    assert held(model, "decode").seconds == pytest.approx(0.05) and held(None, "sample").seconds == 0.0
    with pytest.raises(ValueError, match="only the null family simulates GPU time"):
        ModelSpec(family="wan", simulate={"sample_s": 1})
    with pytest.raises(ValueError, match="give a profile"):
        SimulatedGpu()
    with pytest.raises(ValueError, match="unknown GPU 'v100'"):
        SimulatedGpu(profile="wan2.1-1.3b-480p@v100")
    with pytest.raises(ValueError, match="unknown profile model 'wan9'"):
        SimulatedGpu(profile="wan9@h100")


@pytest.mark.slow
def test_a_profile_resolves_to_seconds_per_window_from_the_plans_flops():
    """Wan2.1 1.3B at 480p on an H100: the plan's FLOPs at MFU 0.35 (tens of seconds a window), the VAE's far less."""
    from stages.models.gpus import GPU_TABLE
    from stages.models.memory_plan import variant_flops
    from stages.models.simulation import CHECKPOINTS, SimulatedGpu

    sim = SimulatedGpu(profile="wan2.1-1.3b-480p@h100", time_scale=0.01).resolved()
    flops = variant_flops(CHECKPOINTS / "wan2.1-t2v-1.3b", 480, 832, 81, steps=50, cfg=True)
    assert sim.sample_s == pytest.approx(flops / (GPU_TABLE["h100-80gb"][1] * 1e12 * 0.35))
    assert 0 < sim.decode_s < sim.sample_s / 10 and sim.held("sample") == pytest.approx(sim.sample_s * 0.01)
