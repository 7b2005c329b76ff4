"""Weights from object storage (stages/models/staging.py) on a real S3 protocol (moto): the tiny Wan checkpoint
uploaded to s3://rushes-test/models/tiny-wan/ is staged into a fresh cache and loaded with from_pretrained; a
second staging copies nothing; an interrupted copy is resumed from its `.part`, never loaded half-made; a changed
object is staged again and changes the fingerprint, which never reads the weights; a missing prefix is refused
naming its URI."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from stages.common.storage import StorageError
from stages.contract import ModelSpec, RunContext
from stages.models import staging
from stages.models.checkpoints import model_identity, resolve_model_path
from stages.models.families import family_for
from stages.models.lora import staged_loras
from stages.models.references import check_references
from stages.models.staging import is_remote, remote_fingerprint, remote_listing, stage
from tests.faulty_s3 import FaultyS3, Rule

URI = "s3://rushes-test/models/tiny-wan/"
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def files_of(folder) -> dict[str, str]:
    """{relative path: sha256} of the files a loader would see (the staging's own dot-files left out)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture
def tiny_wan(s3, tmp_path, monkeypatch):
    """(s3fs, storage_options, the local source folder) with the tiny Wan checkpoint at URI and a fresh cache."""
    fs, endpoint = s3
    local = resolve_model_path("builtin:tiny-wan")  # built into the session's cache first
    fs.put(local.rstrip("/") + "/", URI, recursive=True)
    monkeypatch.setenv("RUSHES_CACHE", str(tmp_path / "node-cache"))  # a node that has staged nothing yet
    return fs, {"endpoint_url": endpoint}, local


@pytest.fixture
def proxy(s3):
    """A proxy in front of moto that records every request and can refuse some."""
    p = FaultyS3(int(s3[1].rsplit(":", 1)[1])).start()
    yield p
    p.stop()


def data_reads(proxy, path: str = "/rushes-test/models/") -> list[tuple[str, str | None]]:
    """(path, Range) of every GET of an object's bytes (listings are GETs of the bucket, without the path)."""
    return [(p, r) for m, p, r in proxy.requests if m == "GET" and p.startswith(path)]


def test_what_is_remote():
    assert is_remote(URI) and is_remote("gs://b/m") and is_remote("s3://b/lora.safetensors")
    assert not any(is_remote(p) for p in ("builtin:tiny-wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "/models/wan",
                                          "file:///models/wan", "", None))


def test_a_checkpoint_in_s3_is_staged_and_loaded_with_from_pretrained(tiny_wan):
    from diffusers import WanPipeline

    fs, options, local = tiny_wan
    staged = resolve_model_path(URI, options)
    assert staged.startswith(str(staging.cache_dir() / "staged"))
    assert files_of(staged) == files_of(local)
    pipe = WanPipeline.from_pretrained(staged)
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    listing = remote_listing(URI, options)
    assert set(listing) == set(files_of(local)) and listing[WEIGHTS]["size"] == os.path.getsize(Path(local) / WEIGHTS)
    assert all(m["etag"] for m in listing.values())


def test_staging_twice_copies_once(tiny_wan, proxy):
    fs, options, _ = tiny_wan
    first = stage(URI, options)
    inodes = {p: os.stat(Path(first) / p).st_ino for p in files_of(first)}
    # Every read of an object's bytes is refused now: a second copy would fail, and with it this test.
    proxy.rules = [Rule("GET", "/rushes-test/models/tiny-wan/", "AccessDenied")]
    second = stage(URI, {"endpoint_url": f"http://127.0.0.1:{proxy.port}"})
    assert second == first and proxy.rules[0].hits == 0 and not data_reads(proxy)
    assert {p: os.stat(Path(second) / p).st_ino for p in files_of(second)} == inodes


def test_an_interrupted_copy_is_never_loaded_and_resumes_from_its_part(tiny_wan, proxy, monkeypatch):
    fs, _, local = tiny_wan
    options = {"endpoint_url": f"http://127.0.0.1:{proxy.port}"}
    monkeypatch.setattr(staging, "CHUNK", 4096)  # ranged reads of 4 KiB, so that the copy stops mid-file
    proxy.rules = [Rule("GET", f"/rushes-test/models/tiny-wan/{WEIGHTS}", "AccessDenied", after=2)]
    with pytest.raises(StorageError, match="tiny-wan/transformer/diffusion_pytorch_model.safetensors"):
        resolve_model_path(URI, options)
    folder = staging.staged_folder(URI)
    part = folder / (WEIGHTS + ".part")
    assert part.stat().st_size == 2 * 4096 and not (folder / WEIGHTS).exists()
    assert not (folder / staging.COMPLETE).exists()
    with pytest.raises(StorageError):  # still refused: the half-made folder is never handed out
        resolve_model_path(URI, options)
    proxy.rules, proxy.requests[:] = [], []
    staged = resolve_model_path(URI, options)
    ranges = [r for p, r in data_reads(proxy) if p.endswith(WEIGHTS)]
    assert ranges[0] == "bytes=8192-12287"  # resumed where the part ended
    assert files_of(staged) == files_of(local) and not part.exists()


def test_a_part_of_an_older_object_is_copied_again_from_the_start(tiny_wan, proxy, monkeypatch):
    fs, _, local = tiny_wan
    options = {"endpoint_url": f"http://127.0.0.1:{proxy.port}"}
    monkeypatch.setattr(staging, "CHUNK", 4096)
    proxy.rules = [Rule("GET", f"/rushes-test/models/tiny-wan/{WEIGHTS}", "AccessDenied", after=2)]
    with pytest.raises(StorageError):
        stage(URI, options)
    new = fs.cat(URI + WEIGHTS)[:-16] + b"\0" * 16  # the same size, other bytes
    fs.pipe(URI + WEIGHTS, new)
    proxy.rules, proxy.requests[:] = [], []
    staged = stage(URI, options)
    assert [r for p, r in data_reads(proxy) if p.endswith(WEIGHTS)][0] == "bytes=0-4095"
    assert (Path(staged) / WEIGHTS).read_bytes() == new


def test_a_changed_object_is_staged_again_and_changes_the_fingerprint(tiny_wan):
    fs, options, local = tiny_wan
    before = remote_fingerprint(URI, options)
    identity = model_identity("wan", URI, None, "float32", storage_options=options)
    assert identity["weights_hash"] == before and identity["path"] == URI
    staged = stage(URI, options)
    fs.pipe(URI + "scheduler/scheduler_config.json", b'{"_class_name": "UniPCMultistepScheduler", "shift": 5.0}')
    fs.rm(URI + "tokenizer/tokenizer.json")
    after = remote_fingerprint(URI, options)
    assert after != before
    assert model_identity("wan", URI, None, "float32", storage_options=options)["weights_hash"] == after
    again = stage(URI, options)
    assert again == staged
    assert (Path(again) / "scheduler/scheduler_config.json").read_bytes().endswith(b'"shift": 5.0}')
    assert not (Path(again) / "tokenizer/tokenizer.json").exists()  # what the store no longer has is gone


def test_the_fingerprint_reads_no_weights(tiny_wan, proxy):
    fs, _, _ = tiny_wan
    options = {"endpoint_url": f"http://127.0.0.1:{proxy.port}"}
    identity = model_identity("wan", URI, None, "float32", storage_options=options)
    assert identity["weights_hash"] == remote_fingerprint(URI, options)
    assert not data_reads(proxy)  # listings only
    assert not staging.staged_folder(URI).exists()


def test_a_missing_prefix_is_refused_with_its_uri(tiny_wan):
    fs, options, _ = tiny_wan
    missing = "s3://rushes-test/models/nothing-here/"
    with pytest.raises(FileNotFoundError, match="s3://rushes-test/models/nothing-here/"):
        stage(missing, options)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        remote_fingerprint(missing, options)
    wan = family_for("wan")
    problems, _ = check_references(ModelSpec(path=missing), wan, options)
    assert problems == [f"model.path: {missing!r} does not exist (no objects under it)"]
    problems, _ = check_references(ModelSpec(path=URI + "vae/"), wan, options)
    assert problems == [f"model.path: {URI + 'vae/'!r} is no diffusers checkpoint (no model_index.json under it)"]
    lora = "s3://rushes-test/loras/none.safetensors"
    problems, _ = check_references(ModelSpec(path=URI, loras=[{"path": lora}]), wan, options)
    assert problems == [f"model.loras[0].path: {lora!r} does not exist (no objects under it)"]
    assert check_references(ModelSpec(path=URI), wan, options) == ([], [])


def test_a_checkpoint_of_another_family_in_s3_is_refused_by_its_model_index(tiny_wan):
    fs, options, _ = tiny_wan
    problems, _ = check_references(ModelSpec(family="ltx", path=URI), family_for("ltx"), options)
    assert len(problems) == 1 and "is a WanPipeline checkpoint" in problems[0] and URI in problems[0]


def test_a_lora_in_s3_is_staged_and_gives_the_local_lora_s_pixels(tiny_wan, tmp_path):
    pytest.importorskip("peft")
    from stages.sample import SampleOptions, SampleStage
    from tests.stages.test_lora import make_lora, rows

    fs, options, local = tiny_wan
    local_lora = make_lora(tmp_path, path=local)
    fs.put(local_lora, "rushes-test/loras/tiny_lora.safetensors")
    remote = "s3://rushes-test/loras/tiny_lora.safetensors"
    (staged,) = staged_loras(ModelSpec(loras=[{"path": remote, "scale": 0.8}]).loras, options)
    assert staged.scale == 0.8 and Path(staged.path).read_bytes() == Path(local_lora).read_bytes()
    identity = model_identity("wan", URI, None, "float32", ModelSpec(loras=[{"path": remote}]).loras, options)
    assert identity["loras"][0]["weights_hash"] == remote_fingerprint(remote, options)

    def latents(model: dict, storage_options: dict) -> np.ndarray:
        s = SampleStage(SampleOptions(resources={"num_gpus": 0}),
                        RunContext(model=ModelSpec(**model), storage_options=storage_options))
        s.setup()
        return s(rows(1))[0]["latents"]

    from_s3 = latents({"path": URI, "loras": [{"path": remote}]}, options)
    here = latents({"path": local, "loras": [{"path": local_lora}]}, {})
    np.testing.assert_array_equal(from_s3, here)


def test_a_language_model_in_s3_is_fingerprinted_by_the_job_and_loaded_by_the_rewriter(s3, tmp_path, monkeypatch):
    from pipeline.spec import load_job
    from stages.models.rewriters import LocalRewriter, resolve_llm_path

    fs, endpoint = s3
    options = {"endpoint_url": endpoint}
    uri = "s3://rushes-test/models/tiny-qwen/"
    fs.put(resolve_llm_path("builtin:tiny-qwen").rstrip("/") + "/", uri, recursive=True)
    monkeypatch.setenv("RUSHES_CACHE", str(tmp_path / "node-cache"))
    spec = load_job({"manifest": str(tmp_path / "m.parquet"), "output": str(tmp_path / "out"),
                     "storage_options": options, "expand": {"mode": "llm", "model": uri}})
    assert spec.expand.pixel_settings()["expand"]["weights_hash"] == remote_fingerprint(uri, options)
    assert not staging.staged_folder(uri).exists()  # the driver reads the listing only
    rewriter = LocalRewriter(uri, "float32", "cpu", storage_options=options)
    (rewrite,) = rewriter.rewrite([[{"role": "user", "content": "a cat"}]], [1], 0.7, 0.9, 16)
    assert rewrite.output_tokens and (staging.staged_folder(uri) / staging.COMPLETE).exists()


def test_a_clip_model_in_s3_is_staged_by_the_filter_and_scores_as_the_local_one(s3, tmp_path, monkeypatch):
    from stages.filter import FilterOptions, FilterStage
    from stages.media.frames import FrameArray
    from stages.models.clip_score import resolve_clip_path

    fs, endpoint = s3
    uri = "s3://rushes-test/models/tiny-clip/"
    fs.put(resolve_clip_path("builtin:tiny-clip").rstrip("/") + "/", uri, recursive=True)
    monkeypatch.setenv("RUSHES_CACHE", str(tmp_path / "node-cache"))
    moving = np.random.default_rng(0).integers(0, 256, size=(9, 40, 56, 3), dtype=np.uint8)
    row = {"id": "c", "variant": 0, "status": "pending", "frames": FrameArray(moving), "prompt": "a cat",
           "stage_seconds": {}}

    def clip_score(model: str, storage_options: dict) -> float:
        stage = FilterStage(FilterOptions(clip_model=model), RunContext(storage_options=storage_options))
        stage.setup()
        return stage([dict(row)])[0]["metrics"]["clip_score"]

    from_s3 = clip_score(uri, {"endpoint_url": endpoint})
    assert (staging.staged_folder(uri) / staging.COMPLETE).exists()
    assert from_s3 == clip_score("builtin:tiny-clip", {})
