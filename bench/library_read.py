"""Reading a library of many metadata parts on S3: one part after another, several at once, and after
`rushes compact`.

    python bench/library_read.py [--parts 1000] [--records-per-part 8] [--workers 16] [--latency-ms 0]
                                 [--repeat 3]

Starts moto's ThreadedMotoServer on 127.0.0.1 in a child process (so that the server's own Python work
does not share this process's GIL: a real S3 is another machine), writes `--parts` small parts with
`MetadataWriter` as nightly runs would (10 parts per run; each key is regenerated about 4 times, so
there is history), then times, best of `--repeat`:

- `read_records` as it was before concurrent reads (`pq.read_table` on each part, one after another);
- `read_records(workers=1)`: one GET per part, one part after another;
- `read_records(workers=N)`: N parts at once;
- `compact` itself, then `read_records` again with 1 and N workers;
- `LibraryState.load`, what a run reads at its start, before and after compaction.

`--latency-ms` delays every answer of the server, as a real S3's round trip would (moto on loopback
answers in about a millisecond; S3 takes tens). It prints the machine, each time and the ratios. It
checks that the records read are the same every way, and asserts nothing about time.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from machine_info import describe  # bench/machine_info.py, next to this file


def serve(latency_s: float, ready) -> None:
    """The S3 server, in its own process; every request answered `latency_s` late."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    if latency_s:
        app = server._server.app  # werkzeug reads it per request; the server is threaded, so waits overlap

        def delayed(environ, start_response):
            time.sleep(latency_s)
            return app(environ, start_response)
        server._server.app = delayed
    ready.put(server.get_host_and_port())
    while True:
        time.sleep(3600)


def write_library(output: str, options: dict, parts: int, per_part: int) -> None:
    from pipeline.commit import MetadataWriter, record_schema

    keys = max(1, parts * per_part // 4)

    def run(r: int) -> None:  # ten parts per run, committed in order
        writer = MetadataWriter(output, f"20261101T{r // 60 % 24:02d}{r % 60:02d}00Z-{r:06x}",
                                record_schema(pa.schema([("shot", pa.string())])), options)
        for p in range(min(10, parts - r * 10)):
            n = (r * 10 + p) * per_part
            writer.commit([{"id": f"clip-{(n + i) * 7 % keys:06d}", "variant": 0, "row": (n + i) * 7 % keys,
                            "status": "accepted", "params_hash": f"{n + i:064x}", "prompt": f"prompt {n + i}",
                            "video_uri": f"s3://bench/videos/{n + i}.mp4", "bytes": 100_000,
                            "metrics": {"motion": 1.0}, "stage_seconds": {"sample": 1.0},
                            "extra": {"shot": f"s{n % 5}"}} for i in range(per_part)])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, range(-(-parts // 10))))


def read_records_before(output: str, options: dict) -> pa.Table:
    """`read_records` before this change: `pq.read_table` on each part in turn, then the latest per key."""
    from pipeline.library import metadata_parts, record_key

    fs, files = metadata_parts(output, options)
    table = pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files], promote_options="permissive")
    latest: dict[tuple, tuple] = {}
    for i, rec in enumerate(table.select(["id", "variant", "row", "committed_at"]).to_pylist()):
        key, stamp = record_key(rec), (rec["committed_at"], i)
        if key not in latest or stamp >= latest[key][0]:
            latest[key] = (stamp, i)
    return table.take(sorted(i for _, i in latest.values()))


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", type=int, default=1000)
    ap.add_argument("--records-per-part", type=int, default=8)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=serve, args=(a.latency_ms / 1000, ready), daemon=True)
    server.start()
    host, port = ready.get(timeout=60)
    import s3fs

    from pipeline.compact import compact
    from pipeline.library import LibraryState, read_records

    options, output = {"endpoint_url": f"http://{host}:{port}"}, "s3://bench-bucket/library"
    s3fs.S3FileSystem(**options).mkdir("bench-bucket")
    print(describe(with_torch=False))
    print(f"moto S3 (ThreadedMotoServer, own process) on 127.0.0.1, {a.latency_ms:g} ms added per request; "
          f"{a.parts} parts x {a.records_per_part} records; best of {a.repeat}")
    start = time.perf_counter()
    write_library(output, options, a.parts, a.records_per_part)
    print(f"wrote {a.parts} parts in {time.perf_counter() - start:.1f} s (8 writers)")

    rows = {}
    seconds = {}
    w = a.workers
    seconds["before"], rows["before"] = best(lambda: read_records_before(output, options), a.repeat)
    seconds["one"], rows["one"] = best(lambda: read_records(output, options, workers=1), a.repeat)
    seconds["many"], rows["many"] = best(lambda: read_records(output, options, workers=w), a.repeat)
    seconds["state one"], _ = best(lambda: LibraryState.load(output, options, workers=1), a.repeat)
    seconds["state many"], state = best(lambda: LibraryState.load(output, options, workers=w), a.repeat)
    start = time.perf_counter()
    done = compact(output, options, workers=w)
    seconds["compact"] = time.perf_counter() - start
    seconds["after one"], rows["after one"] = best(lambda: read_records(output, options, workers=1), a.repeat)
    seconds["after many"], rows["after many"] = best(lambda: read_records(output, options, workers=w), a.repeat)
    seconds["state after"], after = best(lambda: LibraryState.load(output, options, workers=w), a.repeat)

    first = rows["before"].to_pylist()
    same = all(t.to_pylist() == first for t in rows.values()) and after.keys.tolist() == state.keys.tolist()
    print(f"{done.records} records, {len(first)} current; the same records every way: {same}")
    s = seconds
    print(f"read_records, {a.parts} parts:")
    print(f"  before this change (pq.read_table, one part after another) {s['before']:7.2f} s")
    print(f"  workers=1 (one GET per part, one after another)            {s['one']:7.2f} s   "
          f"{s['before'] / s['one']:5.1f}x faster than before")
    print(f"  workers={w:<2} ({w} parts at once)                             {s['many']:7.2f} s   "
          f"{s['one'] / s['many']:5.1f}x faster than workers=1, {s['before'] / s['many']:5.1f}x than before")
    print(f"compact: {done.parts_before} parts -> {done.parts_after} in {s['compact']:.2f} s")
    print("read_records after compaction:")
    print(f"  workers=1                                                  {s['after one']:7.2f} s   "
          f"{s['one'] / s['after one']:5.1f}x faster than workers=1 before compaction, "
          f"{s['before'] / s['after one']:5.1f}x than before")
    print(f"  workers={w:<2}                                                 {s['after many']:7.2f} s   "
          f"{s['many'] / s['after many']:5.1f}x faster than workers={w} before compaction, "
          f"{s['before'] / s['after many']:5.1f}x than before")
    print(f"LibraryState.load (what a run reads first): workers=1 {s['state one']:.2f} s, workers={w} "
          f"{s['state many']:.2f} s ({s['state one'] / s['state many']:.1f}x), after compaction "
          f"{s['state after']:.2f} s ({s['state one'] / s['state after']:.1f}x)")
    server.terminate()


if __name__ == "__main__":
    main()
