"""expand.backend vllm: Ray Data's LLM processor (vLLM engine) in the expand stage's place. Needs a CUDA GPU
and `pip install 'rushes[vllm]'`; skipped otherwise."""
import pytest

from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.timeout(1200),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_vllm_rewrites_every_variant(ray_local, tmp_path):
    pytest.importorskip("vllm", reason="needs pip install 'rushes[vllm]'")
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a cat walking along a beach at sunset",
                                                       "num_variants": 2}, {"id": "b", "prompt": "a red car"}])
    out = str(tmp_path / "lib")
    run = run_job(load_job(job_dict(manifest, out, expand={
        "mode": "llm", "backend": "vllm", "model": "builtin:tiny-qwen", "resources": {"num_gpus": 1}})),
        echo=lambda *_: None)
    assert sum(run.counts.values()) == 3
    recs = read_records(out).to_pylist()
    assert {r["expand_model"] for r in recs} == {"vllm:builtin:tiny-qwen"}
    assert all(r["expanded_prompt"] for r in recs)
    assert all(r["expand_error"] is None or r["expand_error"].endswith("the original prompt is used") for r in recs)
