"""Shared fixtures: a model cache per test session, manifests written to tmp, one local Ray instance."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


# Credentials for the moto S3 server, set before Ray starts so that workers inherit them. The secret is a
# marker that tests look for in logs, records and saved specs: it must never appear there.
SECRET = "rushes-test-secret-7Qz9-never-log-me"
os.environ.update(AWS_ACCESS_KEY_ID="rushes-test-key-id", AWS_SECRET_ACCESS_KEY=SECRET,
                  AWS_DEFAULT_REGION="us-east-1")
# The API key of the test's language-model endpoint (expand.api_key_env), set before Ray starts for the same
# reason, and a marker in the same way.
LLM_KEY_ENV, LLM_KEY = "RUSHES_TEST_LLM_KEY", "rushes-llm-key-Hx81-never-log-me"
os.environ[LLM_KEY_ENV] = LLM_KEY


@pytest.fixture(scope="session")
def moto_server():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_server):
    """A fresh S3 (moto reset between tests) with bucket `rushes-test`; yields (s3fs, endpoint)."""
    import requests
    import s3fs

    requests.post(f"{moto_server}/moto-api/reset", timeout=10)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=moto_server)
    fs.mkdir("rushes-test")
    yield fs, moto_server
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """The builtin model is built once per session into a fresh cache, as on a new machine."""
    cache = tmp_path_factory.mktemp("rushes-cache")
    os.environ["RUSHES_CACHE"] = str(cache)  # set before Ray starts so that workers inherit it
    return cache


LOCAL_RAY = {"active": False}  # whether the session's local Ray should be running


def start_local_ray():
    import ray

    # address="local": never attach to another Ray that happens to run on this machine
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def ray_local(model_cache):
    """One local Ray for the session. A test module that needs a cluster shuts it down and restarts it."""
    pytest.importorskip("ray")
    ray = start_local_ray()
    LOCAL_RAY["active"] = True
    yield ray
    LOCAL_RAY["active"] = False
    ray.shutdown()


def write_manifest(path, rows: list[dict], types: dict | None = None):
    """Write `rows` as a Parquet manifest; `types` pins column types (else Arrow infers them)."""
    cols = {}
    names = list(dict.fromkeys(k for r in rows for k in r))
    for name in names:
        values = [r.get(name) for r in rows]
        t = (types or {}).get(name)
        cols[name] = pa.array(values, type=t) if t else pa.array(values)
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.fixture
def make_manifest(tmp_path):
    def make(rows, name="manifest.parquet", types=None):
        return write_manifest(tmp_path / name, rows, types)
    return make


def job_dict(manifest: str, output: str, **overrides) -> dict:
    """A small, fast job: tiny builtin model, 64x64, 9 frames, 2 steps."""
    job = {
        "name": "test",
        "manifest": manifest,
        "output": output,
        "sampling": {"height": 64, "width": 64, "num_frames": 9, "fps": 8, "num_inference_steps": 2},
        "sample": {"batch_size": 4, "resources": {"num_cpus": 1, "num_gpus": 0}},
        "decode": {"resources": {"num_cpus": 1, "num_gpus": 0, "replicas": 1}},
        "encode": {"preset": "ultrafast"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    return job


@pytest.fixture(scope="session")
def llm_server(model_cache, tmp_path_factory):
    """`transformers serve` on 127.0.0.1 serving builtin:tiny-qwen (built into the session's cache)."""
    from stages.models.rewriters import resolve_llm_path
    from tests.faulty_llm import LLMServer

    pytest.importorskip("fastapi", reason="needs transformers' serving extra (pip install 'transformers[serving]')")
    server = LLMServer(resolve_llm_path("builtin:tiny-qwen"), tmp_path_factory.mktemp("llm") / "serve.log")
    yield server
    server.stop()


@pytest.fixture
def faulty_llm(llm_server):
    """A fault-injecting proxy in front of the session's LLM server; a fresh one per test."""
    from tests.faulty_llm import FaultyLLM

    proxy = FaultyLLM(llm_server.port)
    yield proxy
    proxy.stop()
