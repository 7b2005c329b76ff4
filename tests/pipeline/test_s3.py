"""Jobs against real S3 protocol: s3fs talking to moto's ThreadedMotoServer on 127.0.0.1.

Storage faults come from a proxy in front of moto that answers with real S3 error responses.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time

import av
import pytest
import yaml

from pipeline.job import run_job
from pipeline.lease import LeaseHeld
from pipeline.library import read_all_records, read_records
from pipeline.spec import JobSpecError, load_job
from stages.common.storage import StorageError
from tests.conftest import SECRET, job_dict, write_manifest
from tests.faulty_s3 import FaultyS3, Rule

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
quiet = dict(echo=lambda *_: None)


def upload_manifest(fs, tmp_path, rows, key="rushes-test/in/m.parquet"):
    fs.put(write_manifest(tmp_path / "m.parquet", rows), key)
    return f"s3://{key}"


def s3_job(manifest, output, endpoint, **kw):
    return job_dict(manifest, output, storage_options={"endpoint_url": endpoint}, **kw)


def generated(records):
    return sorted((r["id"], r["variant"]) for r in records if r["status"] in ("accepted", "rejected"))


def test_s3_manifest_to_s3_output_and_every_mp4_decodes(ray_local, s3, tmp_path):
    fs, endpoint = s3
    manifest = upload_manifest(fs, tmp_path, [{"id": "a", "prompt": "a cat", "num_variants": 2},
                                              {"id": "b", "prompt": "a dog"}, {"id": "c/d", "prompt": "x"}])
    summary = run_job(load_job(s3_job(manifest, "s3://rushes-test/lib", endpoint)), **quiet)
    assert summary.counts["invalid"] == 1 and summary.generated == 3
    recs = read_records("s3://rushes-test/lib", {"endpoint_url": endpoint}).to_pylist()
    videos = [r for r in recs if r["video_uri"]]
    assert len(videos) == 3
    for r in videos:
        assert r["video_uri"].startswith("s3://rushes-test/lib/videos/")
        data = fs.cat(r["video_uri"])
        with av.open(io.BytesIO(data)) as c:
            assert sum(1 for _ in c.decode(video=0)) == r["num_frames"]
    assert not fs.exists("rushes-test/lib/_lease.json")  # released
    assert fs.exists(f"rushes-test/lib/runs/{summary.run_id}/job.yaml")


def test_transient_errors_are_retried_and_give_identical_bytes(ray_local, s3, tmp_path):
    fs, endpoint = s3
    manifest = upload_manifest(fs, tmp_path, [{"id": "a", "prompt": "a cat", "seed": 1},
                                              {"id": "b", "prompt": "a dog", "seed": 2}])
    # One run id for both: it is in each file's provenance tags, so with it the bytes must match too.
    run_job(load_job({**s3_job(manifest, "s3://rushes-test/clean", endpoint), "run_id": "r1"}), **quiet)
    proxy = FaultyS3(int(endpoint.rsplit(":", 1)[1])).start()
    # More SlowDowns in a row than botocore retries by itself, so Rushes' own backoff is exercised too.
    proxy.rules = [Rule("PUT", "/faulty/videos/a/", "SlowDown", times=7),
                   Rule("PUT", "/faulty/metadata/", "InternalError", times=2)]
    try:
        summary = run_job(load_job({**s3_job(manifest, "s3://rushes-test/faulty",
                                                  f"http://127.0.0.1:{proxy.port}"), "run_id": "r1"}), **quiet)
    finally:
        proxy.stop()
    assert [r.hits for r in proxy.rules] == [7, 2]
    assert summary.counts["failed"] == 0 and summary.generated == 2
    clean = {(r["id"], r["variant"]): r["sha256"] for r in read_records("s3://rushes-test/clean",
                                                                           {"endpoint_url": endpoint}).to_pylist()}
    faulty = {(r["id"], r["variant"]): r["sha256"] for r in read_records("s3://rushes-test/faulty",
                                                                            {"endpoint_url": endpoint}).to_pylist()}
    assert clean == faulty
    for key, sha in faulty.items():
        import hashlib

        assert hashlib.sha256(fs.cat(f"rushes-test/faulty/videos/{key[0]}/{key[1]}.mp4")).hexdigest() == sha


def test_access_denied_and_missing_bucket_fail_fast_and_commit_nothing(s3, tmp_path):
    fs, endpoint = s3
    manifest = upload_manifest(fs, tmp_path, [{"id": "a", "prompt": "a cat"}])
    proxy = FaultyS3(int(endpoint.rsplit(":", 1)[1])).start()
    proxy.rules = [Rule("PUT", "/denied/", "AccessDenied")]
    try:
        with pytest.raises(StorageError) as e:
            run_job(load_job(s3_job(manifest, "s3://rushes-test/denied", f"http://127.0.0.1:{proxy.port}")),
                    **quiet)
    finally:
        proxy.stop()
    assert "create s3://rushes-test/denied/_lease.json failed: PermissionError" in str(e.value)
    assert proxy.rules[0].hits == 1  # permanent: not retried
    assert fs.find("rushes-test/denied") == []
    with pytest.raises(StorageError, match="create s3://no-such-bucket-r/lib/_lease.json failed: FileNotFound"):
        run_job(load_job(s3_job(manifest, "s3://no-such-bucket-r/lib", endpoint)), **quiet)


def test_secrets_are_refused_in_the_job_file():
    with pytest.raises(JobSpecError, match="storage_options: secret: credentials do not belong") as e:
        load_job({"manifest": "m", "output": "o", "storage_options": {"secret": SECRET}})
    assert SECRET not in str(e.value)


def rushes_run(job_path, *args, log, env=None):
    """`rushes run` in its own process group (its local Ray included), output to `log`."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job_path), *args], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_for(condition, timeout=240, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_driver_then_rerun_gives_exactly_the_manifest_with_no_duplicates(s3, tmp_path):
    fs, endpoint = s3
    # The chaos family (tests/chaos/family.py, the real tiny Wan) holds rows 6-11 until the gate opens, so the
    # kill lands mid-run whatever the machine's speed: at least 2 and at most 6 videos committed.
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    env = {"RUSHES_CHAOS_DIR": str(chaos), "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    rows = [{"id": f"clip-{i:02d}", "prompt": f"scene number {i}" + (" hold:s3gate" if i >= 6 else ""), "seed": i}
            for i in range(12)]
    rows.append({"id": "bad id", "prompt": "spaces in id"})
    manifest = upload_manifest(fs, tmp_path, rows)
    out, opts = "s3://rushes-test/nightly", {"endpoint_url": endpoint}
    job = s3_job(manifest, out, endpoint, model={"family": "tests.chaos.family:ChaosWan"}, sample={"batch_size": 1})
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(job))
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = rushes_run(job_path, "--run-id", "first", log=log, env=env)
        try:
            wait_for(lambda: fs.exists("rushes-test/nightly/_lease.json"), what="the first run's lease")
            # A second run started by mistake while the first is going: refused, naming the holder.
            with pytest.raises(LeaseHeld, match="held by run first"):
                run_job(load_job(job), **quiet)
            wait_for(lambda: len(generated(read_all_records(out, opts).to_pylist())) >= 2,
                     what="two committed videos")
            wait_for(lambda: any(chaos.glob("holding-s3gate-*")), what="a held row")
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    before = generated(read_all_records(out, opts).to_pylist())
    assert 2 <= len(before) <= 6, before
    (chaos / "s3gate").touch()
    # The dead run's lease has not expired, but its holder ran on this machine and its process is gone.
    second_log = tmp_path / "second.log"
    with open(second_log, "w") as log:
        again = rushes_run(job_path, "--run-id", "second", log=log, env=env)
        assert again.wait(timeout=400) == 0, second_log.read_text()[-3000:]
    lines = second_log.read_text().splitlines()
    assert any(line.startswith("[rushes] took over the lease of run first: its process (pid ")
               and line.endswith("on this host) is gone") for line in lines), lines
    work = json.loads(fs.cat("rushes-test/nightly/runs/second/summary.json"))["work"]
    assert work["skipped"] == len(before)
    assert work.get("new", 0) + work.get("retried", 0) == 12 - len(before)
    every = read_all_records(out, opts).to_pylist()
    # exactly the manifest's set, each key committed once over both runs
    assert generated(every) == sorted((f"clip-{i:02d}", 0) for i in range(12))
    assert [r["id"] for r in every if r["status"] == "invalid"] == ["bad id"]
    videos = sorted(p for p in fs.find("rushes-test/nightly/videos"))
    assert videos == sorted(f"rushes-test/nightly/videos/clip-{i:02d}/0.mp4" for i in range(12)
                            if any(r["id"] == f"clip-{i:02d}" and r["status"] == "accepted" for r in every))
    # the secret from the environment is nowhere: logs, records, saved specs, any object
    text = log_path.read_text() + second_log.read_text()
    assert SECRET not in text
    for path in fs.find("rushes-test/nightly"):
        assert SECRET.encode() not in fs.cat(path), path
