import pytest

from pipeline.spec import JobSpecError, load_job


def test_defaults_fill_everything_but_manifest_and_output():
    spec = load_job({"manifest": "m.parquet", "output": "out"})
    assert spec.model.path == "builtin:tiny-wan"
    assert spec.sample.resources.num_gpus == "auto"  # a GPU each, or a share of one (pipeline/capacity.py)
    assert spec.resolved().run_id


def test_typo_names_the_key_path_and_suggests(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("manifest: m.parquet\noutput: out\nsample:\n  batchsize: 4\n")
    with pytest.raises(JobSpecError) as e:
        load_job(job)
    msg = str(e.value)
    assert "sample.batchsize: unknown key; did you mean 'batch_size'?" in msg
    assert str(job) in msg


def test_bad_values_name_the_path_and_what_is_allowed():
    with pytest.raises(JobSpecError) as e:
        load_job({"manifest": "m", "output": "o", "model": {"dtype": "float8"},
                  "sampling": {"num_inference_steps": 0}})
    msg = str(e.value)
    assert "model.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16', got 'float8'" in msg
    assert "sampling.num_inference_steps: Input should be greater than or equal to 1" in msg


def test_missing_required_and_shape_the_model_cannot_make():
    with pytest.raises(JobSpecError, match="output: required key is missing"):
        load_job({"manifest": "m"})
    with pytest.raises(JobSpecError, match="height must be a multiple of 16 for family 'wan', got 100"):
        load_job({"manifest": "m", "output": "o", "sampling": {"height": 100}})
    with pytest.raises(JobSpecError, match=r"num_frames must be 4\*k\+1"):
        load_job({"manifest": "m", "output": "o", "sampling": {"num_frames": 16}})


def test_overrides_replace_manifest_and_output(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("manifest: a.parquet\noutput: out-a\n")
    spec = load_job(job, manifest="b.parquet", output="s3://bucket/out-b")
    assert (spec.manifest, spec.output, spec.name) == ("b.parquet", "s3://bucket/out-b", "job")


def test_unreadable_job_files(tmp_path):
    with pytest.raises(JobSpecError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(JobSpecError, match="a job file is a YAML mapping"):
        load_job(bad)


def test_replicas_take_a_number_or_a_min_max_range():
    spec = load_job({"manifest": "m", "output": "o", "sample": {"resources": {"replicas": "2..8"}},
                     "decode": {"resources": {"replicas": 3}}})
    assert spec.sample.resources.replica_range == (2, 8)
    assert spec.decode.resources.replica_range == (3, 3)
    for bad, why in (("8..2", "range '8..2' needs 1 <= min <= max"), ("lots", "must be a number, a range 'min..max'"),
                     (0, "must be at least 1")):
        with pytest.raises(JobSpecError) as e:
            load_job({"manifest": "m", "output": "o", "sample": {"resources": {"replicas": bad}}})
        assert f"sample.resources.replicas: {why}" in str(e.value)


def test_model_family_is_built_in_or_an_importable_class():
    spec = load_job({"manifest": "m", "output": "o", "model": {"family": "tests.chaos.family:ChaosWan"}})
    assert spec.model.family == "tests.chaos.family:ChaosWan"
    with pytest.raises(JobSpecError, match="model.family: unknown model family 'sora'"):
        load_job({"manifest": "m", "output": "o", "model": {"family": "sora"}})
    with pytest.raises(JobSpecError, match="model.family: model family 'nope.mod:X' cannot be imported"):
        load_job({"manifest": "m", "output": "o", "model": {"family": "nope.mod:X"}})


def test_a_resources_block_changes_only_the_keys_it_names():
    spec = load_job({"manifest": "m", "output": "o", "sample": {"resources": {"num_cpus": 4}},
                     "decode": {"resources": {"memory_gb": 8}}})
    assert spec.sample.resources.num_cpus == 4 and spec.sample.resources.num_gpus == "auto"  # the GPU ask kept
    assert spec.decode.resources.replicas == "auto" and spec.decode.resources.memory_gb == 8
    assert spec.sample.batch_size == 1 and spec.encode.resources.num_gpus == 0
