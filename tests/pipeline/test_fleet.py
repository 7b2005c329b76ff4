"""A simulated GPU fleet (bench/fleet.py's machinery): the null family holding logical GPUs for simulated seconds,
the spans every model stage's batch leaves on its records, the GPU-time figures of the report, and the order work
starts in. Runs on a local Ray of its own with two logical GPUs (no device behind them). No timing is asserted but
lower bounds that a sleep guarantees."""
from __future__ import annotations

import pytest

from pipeline.gpu_time import gpu_time
from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.spec import load_job
from tests.conftest import LOCAL_RAY, start_local_ray

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SAMPLE_S, DECODE_S = 0.2, 0.05
LONG = {"num_frames": 17 + 8 * 2, "base_num_frames": 17, "overlap_history": 9}  # three windows


@pytest.fixture(scope="module")
def two_gpus(model_cache):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if LOCAL_RAY["active"]:
        start_local_ray()


def fleet_job(make_manifest, output, order="longest_first", rows=6):
    manifest = make_manifest([{"id": f"r{i}", "prompt": f"a kite over a beach, take {i}",
                               **(LONG if i % 3 == 2 else {"num_frames": 9})} for i in range(rows)])
    return load_job({"manifest": manifest, "output": str(output), "order": order,
                     "model": {"family": "null", "simulate": {"sample_s": SAMPLE_S, "decode_s": DECODE_S}},
                     "sampling": {"height": 64, "width": 64}, "encode": {"preset": "ultrafast"}})


def windows(r: dict) -> int:
    return 1 if not r["base_num_frames"] else (r["num_frames"] - 17) // 8 + 1


def test_the_simulated_null_job_holds_each_gpu_per_window_and_records_its_spans(two_gpus, make_manifest, tmp_path):
    spec = fleet_job(make_manifest, tmp_path / "out")
    summary = run_job(spec, echo=lambda _: None)
    records = read_records(spec.output).to_pylist()
    assert summary.counts["accepted"] == 6 and len(records) == 6
    for r in records:
        spans = {s["stage"]: s for s in r["spans"]}
        assert set(spans) == {"sample", "decode"}
        # two GPUs: the sampler and the decoder run together, one actor per GPU, holding it whole
        assert spans["sample"]["worker"] == spans["decode"]["worker"] and "/gpu" in spans["sample"]["worker"]
        assert spans["sample"]["gpus"] == spans["decode"]["gpus"] == 1.0
        assert spans["sample"]["end"] - spans["sample"]["start"] >= windows(r) * SAMPLE_S
        assert spans["decode"]["end"] - spans["decode"]["start"] >= windows(r) * DECODE_S
        assert spans["sample"]["end"] <= spans["decode"]["start"]
    figures = gpu_time([s for r in records for s in r["spans"]], summary.started_at, summary.gpus)
    assert figures.on_gpus and figures.devices == 2
    assert figures.stages["sample"]["busy_s"] >= sum(windows(r) for r in records) * SAMPLE_S
    assert 0 < figures.busy_fraction <= 1 and summary.gpu_lines and not summary.lost
    # the report shows the same figures
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert '<section class="panel" id="gpu-time"><h2>GPU time</h2><ul><li>2 GPUs;' in page
    assert "sample: 2 worker(s) x 1 GPU, busy" in page and "idle" in page


def test_longest_first_changes_no_variant_and_a_run_in_manifest_order_resumes_it(two_gpus, make_manifest, tmp_path):
    """The same job in both orders makes the same variants (params_hash, seed, pixels); the other order's re-run
    of the same output has nothing left to make."""
    first = fleet_job(make_manifest, tmp_path / "a", order="manifest")
    run_job(first, echo=lambda _: None)
    second = fleet_job(make_manifest, tmp_path / "b", order="longest_first")
    run_job(second, echo=lambda _: None)
    key = lambda r: (r["id"], r["variant"], r["seed"], r["params_hash"], r["phash"], r["status"])  # noqa: E731
    a, b = (sorted(map(key, read_records(s.output).to_pylist())) for s in (first, second))
    assert a == b and len(a) == 6
    again = run_job(fleet_job(make_manifest, tmp_path / "a", order="longest_first"), echo=lambda _: None)
    assert again.work["skipped"] == 6 and again.work["new"] == 0
