"""Recaptioning through an OpenAI-compatible endpoint, on a real local Ray: `transformers serve` serving
builtin:tiny-qwen on 127.0.0.1, behind a fault-injecting proxy. Retries, a hung request, a dead endpoint;
resume without a call; the API key nowhere but in the request header."""
from pathlib import Path

import pytest
import ray

from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.spec import load_job
from tests.conftest import LLM_KEY, LLM_KEY_ENV, job_dict, write_manifest
from tests.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROWS = [{"id": "beach", "prompt": "a cat walking along a beach at sunset", "num_variants": 2},
        {"id": "car", "prompt": "a red car at night"}, {"id": "robots", "prompt": "two robots dance"}]


def endpoint(url: str, model: str, **kw) -> dict:
    return {"mode": "llm", "backend": "openai", "url": url, "model": model, "api_key_env": LLM_KEY_ENV,
            "timeout_s": 20, "max_retries": 3, "concurrency": 4, **kw}


def records(out) -> dict:
    return {(r["id"], r["variant"]): r for r in read_records(out).to_pylist()}


def every_file(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_retries_then_a_complete_library_and_a_rerun_without_calls(ray_local, llm_server, faulty_llm, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    out = tmp_path / "lib"
    faulty_llm.faults = ["429", "500", "429"]
    lines = []
    job = job_dict(manifest, str(out), expand=endpoint(faulty_llm.url, llm_server.model))
    first = run_job(load_job(job), echo=lines.append)
    assert first.work == {"new": 4}
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] in ("accepted", "rejected") for r in recs.values())
    assert {r["expand_model"] for r in recs.values()} == {f"openai:{llm_server.model}"}
    assert not any("endpoint" in (r["expand_error"] or "") for r in recs.values())  # every call got an answer
    assert all(r["expand_input_tokens"] > 0 for r in recs.values())
    assert faulty_llm.requests >= 4 + 3
    assert faulty_llm.authorization == {f"Bearer {LLM_KEY}"}

    calls = faulty_llm.requests
    again = run_job(load_job(job), echo=lines.append)
    assert again.work == {"skipped": 4}
    assert faulty_llm.requests == calls  # decided from params_hash alone: the endpoint was not called

    # the key is in no log line, record, saved job spec or other output file, nor in Ray's logs
    assert LLM_KEY not in "\n".join(lines)
    assert LLM_KEY.encode() not in every_file(out)
    session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    assert LLM_KEY.encode() not in every_file(session)


def test_a_hung_request_times_out_and_the_run_completes(ray_local, llm_server, faulty_llm, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    out = tmp_path / "lib"
    faulty_llm.faults = ["hang", "hang"]
    run = run_job(load_job(job_dict(manifest, str(out), expand=endpoint(faulty_llm.url, llm_server.model,
                                                                      timeout_s=3))), echo=lambda *_: None)
    assert run.work == {"new": 4} and sum(run.counts.values()) == 4
    assert not any("endpoint" in (r["expand_error"] or "") for r in records(out).values())


@pytest.mark.parametrize("on_error", ["fallback", "fail"])
def test_a_dead_endpoint_falls_back_or_fails_with_a_clear_error(ray_local, tmp_path, on_error):
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    out = tmp_path / "lib"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    run = run_job(load_job(job_dict(manifest, str(out), expand=endpoint(dead, "qwen2.5-7b-instruct", max_retries=2,
                                                                      on_error=on_error))), echo=lambda *_: None)
    assert sum(run.counts.values()) == 4
    recs = records(out)
    for r in recs.values():
        assert r["expand_error"].startswith(f"endpoint {dead}/chat/completions: cannot connect")
        if on_error == "fallback":
            assert r["expanded_prompt"] == r["prompt"] and r["status"] in ("accepted", "rejected")
            assert r["expand_error"].endswith("the original prompt is used")
        else:
            assert r["status"] == "failed" and r["error"].startswith("expand: endpoint")
