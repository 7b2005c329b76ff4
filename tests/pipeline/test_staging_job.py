"""Weights from object storage with real Ray: two actors on one node that stage the same checkpoint at the same
moment copy it once (each object's bytes read once, one folder); a job whose `model.path` is in S3 (moto) runs
with the weights staged by its workers, and its records carry the store's fingerprint; `rushes validate` refuses
a checkpoint that is not there, naming the key and the URI."""
from __future__ import annotations

import asyncio
import os

import pytest
import yaml

from pipeline.cli import EXIT_BAD_INPUT, main
from pipeline.job import run_job
from pipeline.library import read_records
from pipeline.spec import load_job
from stages.models.checkpoints import resolve_model_path
from stages.models.staging import remote_fingerprint, remote_listing
from tests.conftest import job_dict, write_manifest
from tests.faulty_s3 import FaultyS3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
URI = "s3://rushes-test/models/tiny-wan/"
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture
def tiny_wan_in_s3(s3):
    fs, endpoint = s3
    fs.put(resolve_model_path("builtin:tiny-wan").rstrip("/") + "/", URI, recursive=True)
    return fs, {"endpoint_url": endpoint}


def test_two_actors_on_one_node_staging_at_once_copy_once(ray_local, tiny_wan_in_s3, s3, tmp_path):
    ray = ray_local
    from stages.models.staging import stage

    _, options = tiny_wan_in_s3
    proxy = FaultyS3(int(s3[1].rsplit(":", 1)[1])).start()
    # The weights arrive slowly, so that the second actor reaches the lock while the first is still copying.
    proxy.delays = {WEIGHTS: 2.0}

    @ray.remote(num_cpus=0)
    class Gate:
        """Opens when `n` callers wait on it: both actors call stage() at the same moment."""

        def __init__(self, n: int):
            self.n, self.opened = n, asyncio.Event()

        async def wait(self) -> None:
            self.n -= 1
            if self.n == 0:
                self.opened.set()
            await self.opened.wait()

    @ray.remote(num_cpus=0)
    class Stager:
        def stage(self, gate, uri: str, storage_options: dict) -> tuple[str, int, int]:
            ray.get(gate.wait.remote())
            path = stage(uri, storage_options)
            return path, os.getpid(), os.stat(os.path.join(path, WEIGHTS)).st_ino

    node_cache = {"env_vars": {"RUSHES_CACHE": str(tmp_path / "node-cache")}}  # a node that has staged nothing
    gate = Gate.remote(2)
    actors = [Stager.options(runtime_env=node_cache).remote() for _ in range(2)]
    via_proxy = {"endpoint_url": f"http://127.0.0.1:{proxy.port}"}
    try:
        results = ray.get([a.stage.remote(gate, URI, via_proxy) for a in actors], timeout=300)
    finally:
        proxy.stop()
    (path_a, pid_a, ino_a), (path_b, pid_b, ino_b) = results
    assert pid_a != pid_b and path_a == path_b and ino_a == ino_b
    reads = [p for m, p, _ in proxy.requests if m == "GET" and p.startswith("/rushes-test/models/tiny-wan/")]
    listing = remote_listing(URI, options)
    assert sorted(reads) == sorted(f"/rushes-test/models/tiny-wan/{rel}" for rel in listing)  # each object once


def test_a_job_with_its_model_in_s3_records_the_store_s_fingerprint(ray_local, tiny_wan_in_s3, s3, tmp_path):
    fs, options = tiny_wan_in_s3
    fs.put(write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a cat", "seed": 1},
                                                    {"id": "b", "prompt": "a dog", "seed": 2}]), "rushes-test/in/m.parquet")
    job = job_dict("s3://rushes-test/in/m.parquet", "s3://rushes-test/lib", storage_options=options,
                   model={"family": "wan", "path": URI})
    summary = run_job(load_job(job), echo=lambda *_: None)
    assert summary.counts["failed"] == 0 and summary.generated == 2
    records = read_records("s3://rushes-test/lib", options).to_pylist()
    assert {r["model_weights_hash"] for r in records} == {remote_fingerprint(URI, options)}
    assert {r["model_path"] for r in records} == {URI}


def test_validate_refuses_a_checkpoint_that_is_not_in_the_store(s3, tmp_path, capsys):
    fs, endpoint = s3
    fs.put(write_manifest(tmp_path / "m.parquet", [{"id": "a", "prompt": "a cat"}]), "rushes-test/in/m.parquet")
    missing = "s3://rushes-test/models/not-uploaded/"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_dict("s3://rushes-test/in/m.parquet", "s3://rushes-test/lib",
                                           storage_options={"endpoint_url": endpoint},
                                           model={"family": "wan", "path": missing})))
    assert main(["validate", str(job)]) == EXIT_BAD_INPUT
    err = capsys.readouterr()
    assert f"model.path: {missing!r} does not exist" in err.out + err.err
