"""The `rushes` command as a user runs it: a subprocess, its output and its exit code."""
import os
import subprocess
import sys

import pyarrow.dataset as pads
import pytest

from tests.conftest import job_dict, write_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rushes(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, "RAY_ADDRESS": ""})


def write_job(path, job: dict):
    import yaml

    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_validate_summarises_rows_and_names_each_invalid_one(tmp_path):
    r = rushes("validate", "manifests/demo.yaml", "--output", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "12 rows, 10 valid, 2 invalid" in r.stdout
    assert "row 10 (id 'bad/id'): id: 'bad/id' must match" in r.stdout
    assert "row 11 (id 'empty-prompt'): prompt: empty" in r.stdout
    assert "variants: 11; to generate 11 (11 new" in r.stdout
    assert rushes("validate", "manifests/demo.yaml", "--strict").returncode == 2


def test_bad_job_file_and_bad_manifest_exit_2_with_the_reason(tmp_path):
    job = write_job(tmp_path / "job.yaml", {"manifest": "m.parquet", "output": "o", "smaple": {}})
    r = rushes("run", job)
    assert r.returncode == 2
    assert "smaple: unknown key; did you mean 'sample'?" in r.stderr
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "caption": "no prompt column"}])
    job = write_job(tmp_path / "job2.yaml", {"manifest": manifest, "output": str(tmp_path / "o")})
    r = rushes("run", job)
    assert r.returncode == 2 and "missing required column 'prompt'" in r.stderr
    assert not (tmp_path / "o").exists()  # refused before any output was written


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_with_overrides_writes_outputs_and_a_summary(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a cat", "seed": 5},
                                                       {"id": "b/c", "prompt": "bad id"}])
    job = write_job(tmp_path / "job.yaml", job_dict("elsewhere.parquet", "elsewhere"))
    out = tmp_path / "out"
    r = rushes("run", job, "--manifest", manifest, "--output", str(out), "--run-id", "nightly-1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "run nightly-1: 2 manifest rows -> 2 records" in r.stdout
    assert "variants: new 1, skipped 0, retried 0, regenerated 0" in r.stdout
    assert "invalid 1" in r.stdout and "videos/min" in r.stdout
    assert (out / "runs" / "nightly-1" / "job.yaml").exists()
    recs = pads.dataset(str(out / "metadata")).to_table().to_pylist()
    assert sorted(r["status"] for r in recs) in (["accepted", "invalid"], ["invalid", "rejected"])
    status = rushes("status", str(out))
    assert status.returncode == 0, status.stderr
    assert f"library {out}: 2 current records" in status.stdout
    assert "invalid   1" in status.stdout and "latest run: nightly-1" in status.stdout
    assert "running now: none" in status.stdout
