"""Records committed one object per row vs one object per batch: write and read-back cost.

    python bench/commit_granularity.py [--records 512] [--batch 8]

Runs against a local folder and an S3 endpoint (moto's ThreadedMotoServer on 127.0.0.1, started here),
and prints seconds to commit all records and to read the current state back (`read_records`).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import pyarrow as pa

from pipeline.commit import MetadataWriter, record_schema
from pipeline.library import read_records


def fake_records(n: int) -> list[dict]:
    return [{"id": f"clip-{i:06d}", "variant": 0, "row": i, "status": "accepted", "params_hash": "0" * 64,
             "video_uri": f"s3://b/videos/clip-{i:06d}/0.mp4", "bytes": 100_000, "sha256": "f" * 64,
             "metrics": {"motion": 1.0}, "stage_seconds": {"sample": 1.0}} for i in range(n)]


def measure(output: str, options: dict, records: list[dict], batch: int) -> tuple[float, float]:
    writer = MetadataWriter(output, f"bench-{batch}", record_schema(pa.schema([])), options)
    start = time.perf_counter()
    for i in range(0, len(records), batch):
        writer.commit(records[i:i + batch])
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    assert read_records(output, options).num_rows == len(records)
    return write_s, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench-bucket")
    records = fake_records(a.records)
    print(f"{platform.node()} | {os.cpu_count()} cores | {a.records} records")
    with tempfile.TemporaryDirectory() as tmp:
        for where, root, opts in (("local", tmp, {}), ("s3 (moto)", "s3://bench-bucket", {"endpoint_url": endpoint})):
            for batch in (1, a.batch):
                w, r = measure(f"{root}/per-{batch}", opts, records, batch)
                print(f"  {where:<10} {batch:>3} record(s)/object: commit {w:7.2f} s ({a.records / w:8.1f} rec/s), "
                      f"read_records {r:6.2f} s")
    server.stop()


if __name__ == "__main__":
    main()
