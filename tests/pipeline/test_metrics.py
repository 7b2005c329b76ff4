"""Live metrics: a real job on the local Ray, then its node's metrics endpoint (what Prometheus scrapes)."""
from __future__ import annotations

import re
import time
import urllib.request

import pytest

from pipeline.job import run_job
from pipeline.spec import load_job
from tests.conftest import job_dict, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROWS = [{"id": "a", "prompt": "a cat on a beach", "seed": 1}, {"id": "b", "prompt": "a red car", "seed": 9},
        {"id": "c", "prompt": ""}]  # invalid


def scrape(port: int, wanted: list[str], timeout_s: float = 60) -> dict[str, float]:
    """The endpoint's samples named rushes_*, {name{job=...,label=...}: value}, once all of `wanted` show."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        samples = {}
        for line in body.splitlines():
            m = re.match(r"(ray_rushes_\w+)\{(.*)\} (\S+)$", line)
            if m and 'job="metrics-test"' in m.group(2):
                labels = ",".join(sorted(x for x in re.findall(r'(\w+="[^"]*")', m.group(2))
                                         if x.split("=")[0] in ("status", "stage", "le")))
                samples[f"{m.group(1)}{{{labels}}}"] = float(m.group(3))
        if all(w in samples for w in wanted) or time.monotonic() > deadline:
            return samples
        time.sleep(1)


def test_metrics_on_the_ray_metrics_endpoint(ray_local, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    job = job_dict(manifest, str(tmp_path / "out"), name="metrics-test", lease_ttl_s=5)  # renewed every 1.25 s
    summary = run_job(load_job(job), echo=lambda *_: None)
    port = ray_local.nodes()[0]["MetricsExportPort"]
    made = {s: n for s, n in summary.counts.items() if s != "invalid"}
    wanted = ["ray_rushes_rows_planned{}", "ray_rushes_rows_committed{}", "ray_rushes_rows_in_flight{}",
              "ray_rushes_stage_seconds_count{stage=\"sample\"}", "ray_rushes_videos_total{status=\"invalid\"}",
              "ray_rushes_lease_renewals_total{}"] + [f'ray_rushes_videos_total{{status="{s}"}}' for s in made]
    samples = scrape(port, wanted)
    assert set(wanted) <= set(samples), f"missing: {set(wanted) - set(samples)}"
    assert samples["ray_rushes_rows_planned{}"] == samples["ray_rushes_rows_committed{}"] == 2
    assert samples["ray_rushes_rows_in_flight{}"] == 0
    assert samples['ray_rushes_videos_total{status="invalid"}'] == 1
    assert all(samples[f'ray_rushes_videos_total{{status="{s}"}}'] == n for s, n in made.items())
    for stage in ("sample", "decode", "filter", "encode"):
        assert samples[f'ray_rushes_stage_seconds_count{{stage="{stage}"}}'] == 2
        assert samples[f'ray_rushes_stage_seconds_bucket{{le="+Inf",stage="{stage}"}}'] == 2
    assert samples["ray_rushes_lease_renewals_total{}"] >= 1
