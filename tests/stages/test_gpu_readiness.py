"""What a first job on a GPU with a real checkpoint needs, checked on this CPU machine wherever it shows here: the
dtype `auto` resolves to, no autograd in a sample call, VAE tiling chosen and recorded, the GPU shares and memory
caps computed from num_gpus, CogVideoX 1.5's padding frames dropped, compilation beside a cache hook, the TI2V-5B
size rule by name, and every model reference checked before any worker starts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.capacity import share_gpus
from pipeline.spec import JobSpecError, load_job
from stages.common.variant import params_hash
from stages.contract import ModelSpec, Resources, RunContext
from stages.decode import DecodeOptions, DecodeStage
from stages.models.checkpoints import resolve_model_path
from stages.models.devices import gpu_memory_settings
from stages.models.families import family_for
from stages.models.references import check_references
from stages.sample import SampleOptions, SampleStage

WAN14B = "Wan-AI/Wan2.1-T2V-14B-Diffusers"


def job(**kw):
    return load_job({"manifest": "m.parquet", "output": "out", **kw})


def test_dtype_auto_is_bfloat16_for_a_real_checkpoint_on_gpus_and_float32_otherwise():
    assert job(model={"path": WAN14B}).model.dtype == "bfloat16"
    assert job().model.dtype == "float32"  # the built-ins: their params_hash unchanged
    assert job(model={"path": WAN14B}, sample={"resources": {"num_gpus": 0}},
               decode={"resources": {"num_gpus": 0}}).model.dtype == "float32"  # a CPU job
    assert job(model={"path": WAN14B, "dtype": "float16"}).model.dtype == "float16"  # as asked
    llm = {"mode": "llm", "backend": "local"}
    assert job(expand={**llm, "model": "Qwen/Qwen2.5-7B-Instruct"}).expand.dtype == "bfloat16"
    assert job(expand={**llm, "model": "builtin:tiny-qwen"}).expand.dtype == "float32"
    assert job(expand={"mode": "llm", "backend": "openai", "model": "m", "url": "http://h/v1"}).expand.dtype == "float32"


def test_a_stage_used_on_its_own_decides_auto_for_its_device():
    m = ModelSpec(path=WAN14B)
    assert m.dtype == "auto" and m.dtype_on("cuda") == "bfloat16" and m.dtype_on("cpu") == "float32"
    assert ModelSpec().dtype_on("cuda") == "float32"


def test_each_family_keeps_its_vae_in_its_own_dtype():
    assert family_for("wan").vae_dtype_for("bfloat16") == "float32"
    assert family_for("hunyuan").vae_dtype_for("bfloat16") == "float16"
    assert family_for("ltx").vae_dtype_for("bfloat16") == "bfloat16"
    assert family_for("hunyuan").vae_dtype_for("float32") == "float32"


def test_a_sample_call_runs_without_autograd():
    """diffusers puts only __call__ under no_grad: the prompt's encoding must not keep an autograd graph."""
    stage = SampleStage(SampleOptions(resources={"num_gpus": 0}), RunContext(model=ModelSpec()))
    stage.setup()
    seen = []
    encode = stage.pipe.encode_prompt

    def watched(*args, **kwargs):
        out = encode(*args, **kwargs)
        seen.append((torch.is_grad_enabled(), [t.requires_grad for t in out if isinstance(t, torch.Tensor)]))
        return out

    stage.pipe.encode_prompt = watched
    row = dict(id="a", status="pending", expanded_prompt="a cat", negative_prompt="", seed=1, height=64, width=64,
               num_frames=9, num_inference_steps=2, guidance_scale=5.0, stage_seconds={})
    out = stage([row])[0]
    assert out["status"] == "pending" and seen
    assert all(not grad and not any(flags) for grad, flags in seen), seen


def test_vae_tiling_is_chosen_for_the_family_enters_params_hash_and_is_recorded(tmp_path):
    hunyuan = job(model={"family": "hunyuan", "path": "hunyuanvideo-community/HunyuanVideo"})
    assert hunyuan.decode.tiling == "on" and hunyuan.decode.pixel_settings() == {"decode": {"vae_tiling": True}}
    assert job(model={"family": "hunyuan"}).decode.tiling == "off"  # builtin: never
    assert job(model={"path": WAN14B}).decode.tiling == "off" and job().decode.pixel_settings() == {}
    with pytest.raises(JobSpecError, match="decode: tiling: family 'null' has no VAE to tile"):
        job(model={"family": "null"}, decode={"tiling": "on"})
    v = {"expanded_prompt": "a", "negative_prompt": "", "seed": 1, "height": 64, "width": 64, "num_frames": 9,
         "fps": 8, "num_inference_steps": 2, "guidance_scale": 5.0}
    assert params_hash({"decode": {"vae_tiling": True}}, v) != params_hash({}, v)

    stage = DecodeStage(DecodeOptions(tiling="on", resources={"num_gpus": 0}), RunContext(model=ModelSpec()))
    stage.setup()
    assert stage.vae.use_tiling
    z = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    r = stage([{"status": "pending", "latents": z, "seed": 1, "stage_seconds": {}}])[0]
    assert r["vae_tiling"] is True and r["vae_dtype"] == "float32" and r["frames"].num_frames == 9


def test_gpu_shares_and_memory_caps_follow_num_gpus():
    auto = Resources(num_gpus="auto")
    one_gpu = share_gpus({"sample": auto, "decode": auto}, gpus=1)
    assert one_gpu["sample"].num_gpus == 0.5 and one_gpu["decode"].num_gpus == 0.5  # both pools at once
    assert share_gpus({"sample": auto, "decode": auto}, gpus=8)["decode"].num_gpus == 1.0
    assert share_gpus({"expand": auto, "sample": auto, "decode": auto}, gpus=1)["sample"].num_gpus == 0.33
    assert share_gpus({"sample": Resources(num_gpus=1), "decode": auto}, gpus=2)["decode"].num_gpus == 1.0
    assert share_gpus({"sample": auto}, gpus=0)["sample"].num_gpus == 0.0
    assert gpu_memory_settings(0.5) == {"memory_fraction": 0.5, "alloc_conf": "expandable_segments:True"}
    assert gpu_memory_settings(1.0)["memory_fraction"] is None


def test_cogvideox_15_padding_frames_are_dropped_and_the_frames_match_the_pipeline(tmp_path):
    """CogVideoX 1.5 pads the latent frames to its temporal patch of 2; 9 frames asked (3 latent frames, padded to
    4 while sampling) are 9 frames decoded, as the pipeline's own call gives."""
    import diffusers

    from stages.models.builtin import build_tokenizer
    from tests.planning import sample

    tokenizer = build_tokenizer()
    base = diffusers.CogVideoXPipeline.from_pretrained(resolve_model_path("builtin:tiny-cogvideox"))
    torch.manual_seed(0)
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=32, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False, patch_bias=False)
    pipe = diffusers.CogVideoXPipeline(tokenizer=tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                       transformer=transformer, scheduler=base.scheduler)
    pipe.save_pretrained(tmp_path / "cogvideox15")
    path = str(tmp_path / "cogvideox15")
    fam = family_for("cogvideox")
    sampler = fam.load_pipeline(path, "cpu", ModelSpec(family="cogvideox", path=path))
    z = sample(fam, sampler, ["a cat"], ["blurry"], [3], height=64, width=64, num_frames=9, num_inference_steps=2,
               guidance_scale=5.0)[0]
    assert z.shape[0] == 3  # (F', C, H', W'): the padding latent frame dropped
    frames, _ = fam.decode(fam.load_vae(path, "float32", "cpu"), z)
    assert frames.shape[0] == 9
    pipe.set_progress_bar_config(disable=True)
    own = pipe(prompt="a cat", negative_prompt="blurry", height=64, width=64, num_frames=9, num_inference_steps=2,
               guidance_scale=5.0, generator=torch.Generator().manual_seed(3), output_type="np",
               max_sequence_length=32).frames[0]  # the transformer's text length, as the family encodes
    diff = np.abs(frames.astype(int) - (np.asarray(own) * 255).round().astype(int))
    assert own.shape[0] == 9 and diff.max() <= 4


def test_encode_checks_the_frame_count_the_row_asked_for():
    from stages.encode import EncodeOptions, EncodeStage
    from stages.media.frames import FrameArray

    frames = np.full((13, 32, 32, 3), 100, np.uint8)
    row = {"id": "a", "variant": 0, "status": "accepted", "fps": 8, "num_frames": 9, "params_hash": "h" * 64,
           "frames": FrameArray(frames), "stage_seconds": {}}
    out = EncodeStage(EncodeOptions(preset="ultrafast"))([row])[0]
    assert out["status"] == "failed" and "13 frames decoded, expected 9" in out["error"]


def test_compilation_is_refused_where_the_transformer_has_no_repeated_blocks():
    with pytest.raises(JobSpecError, match="compile_repeated_blocks: CogVideoXTransformer3DModel"):
        job(model={"family": "cogvideox"}, sample={"compile_repeated_blocks": True})
    job(sample={"compile_repeated_blocks": True, "cache": {"kind": "first_block", "threshold": 0.05}})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_blocks_run_beside_a_cache_hook_on_tiny_wan():
    """torch.compile of the repeated blocks with a first-block cache: the hooks' decision functions are
    compiler-disabled, so the blocks compile without fullgraph, and the latents stay those of eager mode."""
    def sampled(**speed):
        stage = SampleStage(SampleOptions(resources={"num_gpus": 0}, **speed), RunContext(model=ModelSpec()))
        stage.setup()
        row = dict(id="a", status="pending", expanded_prompt="a cat", negative_prompt="", seed=1, height=64, width=64,
                   num_frames=9, num_inference_steps=4, guidance_scale=5.0, stage_seconds={})
        out = stage([row])[0]
        assert out["status"] == "pending", out.get("error")
        return out["latents"]

    cache = {"kind": "first_block", "threshold": 0.05}
    np.testing.assert_allclose(sampled(cache=cache, compile_repeated_blocks=True), sampled(cache=cache), atol=1e-3)


def test_ti2v_size_rule_by_name_before_the_checkpoint_is_here():
    wan = family_for("wan")
    problem = wan.check_shape(720, 1280, 121, path="Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    assert problem == "height must be a multiple of 32 for family 'wan', got 720"
    assert wan.check_shape(704, 1280, 121, path="Wan-AI/Wan2.2-TI2V-5B-Diffusers") is None
    assert wan.check_shape(720, 1280, 81, path=WAN14B) is None


def test_model_references_are_checked_before_any_worker(tmp_path, monkeypatch):
    def problems(**model):
        return check_references(ModelSpec(**model), family_for(model.get("family", "wan")))

    msg = problems(family="skyreels", path="builtin:tiny-skyreels-df")[0][0]
    assert "SkyReelsV2DiffusionForcingPipeline checkpoint, which family 'skyreels' does not run" in msg
    assert "does not exist" in problems(path=str(tmp_path / "nope"))[0][0]
    (tmp_path / "empty").mkdir()
    assert "no model_index.json" in problems(path=str(tmp_path / "empty"))[0][0]
    assert "model.loras[0].path" in problems(loras=[{"path": str(tmp_path / "l.safetensors")}])[0][0]
    assert problems(family="skyreels_df", path="builtin:tiny-skyreels-df") == ([], [])
    # a checkpoint folder of another family, read from its model_index.json
    folder = resolve_model_path("builtin:tiny-ltx")
    assert "LTXPipeline checkpoint, which family 'wan'" in problems(path=folder)[0][0]
    # a hub id that is not cached here, on a machine that cannot reach the hub: a warning, not a refusal
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from stages.models import references

    references.hub_reachable.cache_clear()
    found, warnings = problems(path="Wan-AI/Wan2.1-T2V-14B-Diffusers")
    references.hub_reachable.cache_clear()
    assert not found and "not in this machine's Hugging Face cache" in warnings[0]


def test_a_lora_that_does_not_fit_the_transformer_is_refused(tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import save_file

    from tests.stages.test_lora import make_lora

    resolve_model_path("builtin:tiny-wan")
    fits = make_lora(tmp_path / "wan", path="builtin:tiny-wan")
    assert check_references(ModelSpec(loras=[{"path": fits}]), family_for("wan")) == ([], [])
    # an adapter made for a wider model (inner dim 64 where tiny Wan has 32) and a layer tiny Wan lacks
    other = {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
             "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4),
             "transformer.blocks.7.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
             "transformer.blocks.7.attn1.to_q.lora_B.weight": torch.zeros(32, 4)}
    save_file(other, str(tmp_path / "wide.safetensors"))
    found, _ = check_references(ModelSpec(loras=[{"path": str(tmp_path / "wide.safetensors")}]), family_for("wan"))
    assert found and "model.loras[0].path: the adapter does not fit this model's transformer: 1 of its 2 layers " \
                     "are missing and 1 have other sizes" in found[0], found


def test_validate_refuses_a_wrong_model_reference_with_exit_2_and_no_traceback(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.cli import main

    pq.write_table(pa.table({"id": ["a"], "prompt": ["a lighthouse"], "num_frames": [65]}), tmp_path / "m.parquet")
    (tmp_path / "job.yaml").write_text(f"manifest: {tmp_path / 'm.parquet'}\noutput: {tmp_path / 'out'}\n"
                                       "model: {family: skyreels, path: builtin:tiny-skyreels-df}\n")
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert "model.path: 'builtin:tiny-skyreels-df' is a SkyReelsV2DiffusionForcingPipeline checkpoint" in err
    assert "Traceback" not in err


def test_the_vllm_processor_is_configured_from_the_stages_resources():
    """ray.data.llm's vLLM processor gets the expand stage's GPUs (a tensor-parallel width, or a memory share of
    one GPU), its CPUs per worker, its replicas, and turns a failed request into that row's error."""
    from stages.contract import ContractError
    from stages.expand import ExpandOptions, ExpandStage

    def config(**resources):
        stage = ExpandStage(ExpandOptions(mode="llm", backend="vllm", model="Qwen/Qwen2.5-7B-Instruct",
                                          dtype="bfloat16", batch_size=16))
        return stage.llm_processor(Resources(**resources)).config

    two = config(num_gpus=2, num_cpus=4, replicas="1..3")
    assert two["engine_kwargs"]["tensor_parallel_size"] == 2 and two["concurrency"] == (1, 3)
    assert two["placement_group_config"] == {"bundle_per_worker": {"CPU": 2.0, "GPU": 1.0}}
    assert two["should_continue_on_error"] is True and two["batch_size"] == 16
    half = config(num_gpus=0.5, num_cpus=1)
    assert half["engine_kwargs"]["gpu_memory_utilization"] == 0.45 and half["concurrency"] == 1
    assert half["placement_group_config"]["bundle_per_worker"]["GPU"] == 0.5
    with pytest.raises(ContractError, match="backend vllm needs GPUs"):
        config(num_gpus=0)
    vllm = pytest.importorskip("ray.data.llm")
    vllm.vLLMEngineProcessorConfig(**two)  # ray's own validation of the arguments


def test_attention_backends_that_cannot_work_are_refused_at_validate_with_the_reason():
    def refused(family, backend, **model):
        with pytest.raises(JobSpecError) as e:
            job(model={"family": family, **model}, sample={"attention_backend": backend})
        return str(e.value)

    assert "passes an attention mask, which 'flash' cannot take" in refused("ltx", "flash", path="Lightricks/LTX-Video")
    assert "cannot take" in refused("hunyuan", "sage", path="hunyuanvideo-community/HunyuanVideo")
    assert "float16/bfloat16 only, and model.dtype is float32" in refused("wan", "flash")  # the tiny model: float32
    assert "calls PyTorch's SDPA itself and ignores the backend" in refused("cogvideox", "native")
    job(model={"family": "wan", "path": WAN14B}, sample={"attention_backend": "flash"})  # bfloat16, no mask: fine
    job(model={"family": "ltx", "path": "Lightricks/LTX-Video"}, sample={"attention_backend": "_native_cudnn"})
    # SkyReels-V2 diffusion forcing masks block-causally when a row asks for causal blocks above 1
    from stages.sample import SampleOptions

    options = SampleOptions(attention_backend="flash")
    assert "block-causal" in options.check_row({"causal_block_size": 5})
    assert options.check_row({"causal_block_size": None}) is None
