"""Recaptioning with a language model on a real local Ray: builtin:tiny-qwen through from_pretrained, as an
actor pool before sampling; resume without loading it; its identity in params_hash; fall-backs recorded."""
import pytest
import ray

from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LONG = "a long prompt " * 80_000  # ~1.1M characters: far past what the text encoder reads
ROWS = [{"id": "beach", "prompt": "a cat walking along a beach at sunset", "num_variants": 2},
        {"id": "car", "prompt": "a red car at night"},
        {"id": "zh", "prompt": "一只猫在海边散步"},
        {"id": "long", "prompt": LONG}]
LLM = {"mode": "llm", "backend": "local", "model": "builtin:tiny-qwen", "batch_size": 4,
       "resources": {"num_cpus": 1, "num_gpus": 0}}
quiet = dict(echo=lambda *_: None)


def expand_actors() -> int:
    """Actors ever created for the expand stage on this Ray (its actor class is named after the stage)."""
    return sum(1 for a in ray._private.state.actors().values() if a["ActorClassName"].endswith("expand"))


def records(out) -> dict:
    return {(r["id"], r["variant"]): r for r in read_records(out).to_pylist()}


@pytest.fixture(scope="module")
def library(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("expand-llm")
    manifest = write_manifest(base / "m.parquet", ROWS)
    out = str(base / "lib")
    first = run_job(load_job(job_dict(manifest, out, expand=LLM)), **quiet)
    return base, manifest, out, first


def test_every_record_names_its_rewriter_and_what_the_encoder_read(library):
    _, _, out, first = library
    assert first.work == {"new": 5}
    recs = records(out)
    assert len(recs) == 5 and all(r["status"] in ("accepted", "rejected") for r in recs.values())
    assert {r["expand_model"] for r in recs.values()} == {"local:builtin:tiny-qwen"}
    rewritten = [r for r in recs.values() if r["expand_error"] is None]
    assert rewritten and all(r["expanded_prompt"] != r["prompt"] and r["expand_output_tokens"] > 0
                             and r["expand_seconds"] > 0 for r in rewritten)
    long = recs[("long", 0)]
    assert long["expand_error"].startswith("kept as it is: already 240000 words")
    assert long["expanded_prompt"] == LONG
    assert long["truncated"] is True and long["prompt_tokens"] > 512
    assert all(r["truncated"] is False and 0 < r["prompt_tokens"] <= 512
               for k, r in recs.items() if k != ("long", 0))


def test_rerun_skips_everything_without_loading_the_model(library):
    _, manifest, out, _ = library
    actors = expand_actors()
    again = run_job(load_job(job_dict(manifest, out, expand=LLM)), **quiet)
    assert again.work == {"skipped": 5}
    assert expand_actors() == actors


def test_same_seed_same_rewrite_across_runs_and_batch_sizes(library):
    base, manifest, out, _ = library
    other = str(base / "lib-batch-1")
    run_job(load_job(job_dict(manifest, other, expand={**LLM, "batch_size": 1})), **quiet)
    first, second = records(out), records(other)
    assert {k: r["expanded_prompt"] for k, r in first.items()} == {k: r["expanded_prompt"] for k, r in second.items()}
    assert {k: r["params_hash"] for k, r in first.items()} == {k: r["params_hash"] for k, r in second.items()}


def test_a_changed_system_prompt_regenerates(library):
    base, manifest, out, _ = library
    changed = str(base / "lib-changed")
    run_job(load_job(job_dict(manifest, changed, expand=LLM)), **quiet)
    run = run_job(load_job(job_dict(manifest, changed, expand={**LLM, "system_prompt": "Describe the video."})),
                  **quiet)
    assert run.work == {"regenerated": 5}


def test_fallback_is_recorded_and_fail_fails_the_variant(library, tmp_path):
    _, manifest, _, _ = library
    out = str(tmp_path / "lib")
    run_job(load_job(job_dict(manifest, out, expand={**LLM, "max_new_tokens": 8})), **quiet)
    recs = records(out)
    cut = {k for k, r in recs.items() if (r["expand_error"] or "").startswith("over-long output")}
    assert cut
    assert all(recs[k]["expanded_prompt"] == recs[k]["prompt"] and recs[k]["status"] != "failed" for k in cut)
    failing = str(tmp_path / "lib-fail")
    run_job(load_job(job_dict(manifest, failing, expand={**LLM, "max_new_tokens": 8, "on_error": "fail"})), **quiet)
    recs = records(failing)
    assert {k for k, r in recs.items() if r["status"] == "failed"} == cut
    assert all(recs[k]["error"].startswith("expand: over-long output") for k in cut)
