"""A real Ray head (`ray start --head`, dashboard and job server on 127.0.0.1), the demo job submitted to it
with `rushes submit --wait`, its outputs checked, and `rushes status` / `rushes logs` by submission id."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import requests

import pipeline.submit as submit_mod
from pipeline.library import read_records
from pipeline.spec import load_job
from pipeline.submit import SubmitError, client
from tests.ports import free_port, free_ports

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def head_process(log_dir: Path, agent: int | None = None):
    """A separate Ray head in its own process group, stopped by signalling that group: `ray stop` would also
    stop the test session's own local Ray. Yields the dashboard's URL once its job server answers."""
    gcs, dash, own_agent, metrics = free_ports(4)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(log_dir / "head.log", "w")
    # Every port chosen free: the defaults (agent 52365, ...) may be held by the session's own local Ray.
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=4",
         f"--dashboard-agent-listen-port={agent or own_agent}", f"--metrics-export-port={metrics}",
         "--object-store-memory=300000000", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, f"ray start exited {head.returncode}; see {log.name}"
            try:  # the client, not a bare HTTP probe: it carries the cluster's auth token when there is one
                client(url).list_jobs()
                break
            except (ConnectionError, RuntimeError, requests.RequestException, SubmitError):
                pass
            assert time.monotonic() < deadline, "the Ray job server did not come up"
            time.sleep(0.5)
        yield url
    finally:
        # SIGTERM ends the raylet and the workers within seconds, but the GCS and the autoscaler's monitor linger
        # on for up to a minute: a throwaway head is then killed, every process of its group with it.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory, model_cache):
    with head_process(tmp_path_factory.mktemp("head")) as url:
        yield url


def rushes(*args, timeout=360):
    return subprocess.run([str(BIN / "rushes"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def test_submit_wait_runs_the_demo_job_on_the_cluster(ray_head, tmp_path):
    out = tmp_path / "demo-out"
    res = rushes("submit", "manifests/demo.yaml", "--address", ray_head, "--wait", "--output", str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    submitted = next(line for line in res.stdout.splitlines() if line.startswith("submitted "))
    submission_id = submitted.split()[1]
    assert submission_id.startswith("rushes-")
    assert "committed" in res.stdout  # the job's own log lines were followed
    assert f"submission {submission_id}: SUCCEEDED" in res.stdout

    table = read_records(str(out))
    statuses = table.column("status").to_pylist()
    # 12 manifest rows: 2 invalid on purpose, 10 valid of which one asks for 2 variants
    assert len(statuses) == 13 and statuses.count("invalid") == 2
    assert statuses.count("accepted") + statuses.count("rejected") == 11
    assert set(table.column("run_id").to_pylist()) == {submission_id.removeprefix("rushes-")}
    made = [r for r in table.to_pylist() if r["status"] in ("accepted", "rejected")]
    assert all(r["video_uri"] for r in made)  # the demo keeps its rejected videos for the report
    with av.open(made[0]["video_uri"].removeprefix("file://")) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == made[0]["num_frames"] and frames[0].width == made[0]["width"]

    status = rushes("status", submission_id, "--address", ray_head, timeout=60)
    assert status.returncode == 0 and f"submission {submission_id}: SUCCEEDED" in status.stdout
    assert str(out) in status.stdout
    logs = rushes("logs", submission_id, "--address", ray_head, timeout=60)
    assert logs.returncode == 0 and "committed" in logs.stdout


def test_submit_refuses_a_relative_output_and_a_bad_job_file(ray_head, tmp_path):
    res = rushes("submit", "manifests/demo.yaml", "--address", ray_head, timeout=60)
    assert res.returncode == 1 and "output: 'output/demo' is a relative local path" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("manifest: m.parquet\noutput: /tmp/x\nsample: {batchsize: 2}\n")
    res = rushes("submit", str(bad), "--address", ray_head, timeout=60)
    assert res.returncode == 2 and "sample.batchsize: unknown key; did you mean 'batch_size'?" in res.stderr


def test_a_head_whose_job_agent_never_came_up_is_named_as_the_cause(tmp_path, monkeypatch, capsys):
    """The agent's HTTP port is held by another process, so the agent starts without its HTTP service and never
    registers: the job server answers 'try again later' to every submission. Submit waits, then says so and
    where to look, and nothing was submitted."""
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", free_port()))
        squatter.listen()
        with head_process(tmp_path, agent=squatter.getsockname()[1]) as url:
            monkeypatch.setattr(submit_mod, "AGENT_WAIT_S", 1.0)
            spec = load_job(ROOT / "manifests" / "demo.yaml", output=str(tmp_path / "out")).resolved()
            with pytest.raises(SubmitError) as e:
                submit_mod.submit(str(ROOT / "manifests" / "demo.yaml"), spec, url, working_dir=str(ROOT))
            assert "job agent did not come up within 1 s" in str(e.value)
            assert "nothing ran" in str(e.value) and "dashboard_agent.log" in str(e.value)
            assert client(url).list_jobs() == []
            assert "the cluster's job agent is not up yet; waiting up to 1 s" in capsys.readouterr().err
