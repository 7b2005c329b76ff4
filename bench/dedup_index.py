"""The near-duplicate index (stages/media/dedup.py): lookups/s against a linear scan, add throughput, memory.

    python bench/dedup_index.py [--sizes 100000 1000000] [--lookups 2000] [--max-distance 24] [--radii R ...]

For each size n: n random 256-bit hashes, the last tenth near copies of earlier ones (0..48 random bits
flipped), added one at a time as the driver does (adds/s). Then as many lookups as asked, half near
copies of kept hashes and half new random hashes, at each radius (default: max_distance, the rejection
decision, and twice it, a reporting radius for `duplicate_bits`); and, on the first of the same queries in
the same run, the linear scan the index replaced (one XOR and popcount over every kept hash, the first of
the closest), whose answers the index's must equal. Memory: the index's arrays per hash, and what
tracemalloc counts (arrays, key list, int keys) after a second build, and its peak during that build.
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from stages.media.dedup import NearDuplicateIndex

from machine_info import describe  # bench/machine_info.py, next to this file


def near_copies(bits: np.ndarray, rng, max_flips: int) -> np.ndarray:
    """Each row with 0..max_flips random bits flipped."""
    out = bits.copy()
    for row, k in zip(out, rng.integers(0, max_flips + 1, len(out))):
        row[rng.choice(bits.shape[1], k, replace=False)] ^= 1
    return out


def hashes(n: int, rng) -> list[str]:
    """n hashes, the last tenth near copies of earlier ones."""
    bits = rng.integers(0, 2, (n, 256), dtype=np.uint8)
    bits[n - n // 10:] = near_copies(bits[rng.integers(0, n - n // 10, n // 10)], rng, 48)
    return [row.tobytes().hex() for row in np.packbits(bits, axis=1)]


def build(phashes: list[str], max_distance: int) -> NearDuplicateIndex:
    index = NearDuplicateIndex(max_distance)
    for i, phash in enumerate(phashes):
        index.add(i, phash)
    return index


def linear_nearest(kept: np.ndarray, phash: str, radius: int):
    """The lookup the index replaced: every kept hash's distance, the first of the closest."""
    words = np.frombuffer(bytes.fromhex(phash), ">u8").astype(np.uint64)
    d = np.bitwise_count(kept ^ words).sum(axis=1, dtype=np.int64)
    i = int(np.argmin(d))
    return (i, int(d[i])) if d[i] <= radius else None


def per_second(lookup, queries) -> tuple[float, list]:
    start = time.perf_counter()
    answers = [lookup(q) for q in queries]
    return len(queries) / (time.perf_counter() - start), answers


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def run(n: int, lookups: int, max_distance: int, radii: list[int], rng) -> None:
    phashes = hashes(n, rng)
    start = time.perf_counter()
    index = build(phashes, max_distance)
    print(f"n={n:,}: {n / (time.perf_counter() - start):,.0f} adds/s ({load()})")

    kept = np.stack([np.frombuffer(bytes.fromhex(p), ">u8").astype(np.uint64) for p in phashes])
    near = near_copies(np.unpackbits(np.frombuffer(bytes.fromhex("".join(
        phashes[i] for i in rng.integers(0, n, lookups // 2))), np.uint8).reshape(-1, 32), axis=1), rng, 48)
    queries = [row.tobytes().hex() for row in np.packbits(near, axis=1)] + hashes(lookups - lookups // 2, rng)
    rng.shuffle(queries)
    scanned = queries[:max(20, lookups * 100_000 // n // 4)]  # the scan takes 26 ms a lookup at 1M
    for radius in radii:
        rate, answers = per_second(lambda q: index.nearest(q, radius), queries)
        scan_rate, expected = per_second(lambda q: linear_nearest(kept, q, radius), scanned)
        assert answers[:len(scanned)] == expected, f"radius {radius}: the index and the scan disagree"
        found = sum(a is not None for a in answers)
        print(f"  radius {radius}: index {rate:,.0f} lookups/s ({lookups} lookups, {found} found), "
              f"linear scan {scan_rate:,.1f} lookups/s ({len(scanned)}): {rate / scan_rate:,.0f}x ({load()})")

    arrays = {"hashes (used rows)": 32 * n, "hash array capacity": index._words.nbytes,
              "bucket row numbers": index._ids.nbytes, "bucket offsets": index._offsets.nbytes}
    print("  arrays, bytes/hash: " + ", ".join(f"{k} {v / n:.1f}" for k, v in arrays.items()))
    del index
    tracemalloc.start()
    index = build(phashes, max_distance)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  tracemalloc, the index with its key list and int keys: {current / n:.1f} bytes/hash held, "
          f"peak {peak / n:.1f} while adding")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--max-distance", type=int, default=24)
    ap.add_argument("--radii", type=int, nargs="+", help="lookup radii (default: max distance, twice it)")
    a = ap.parse_args()
    print(describe(with_torch=False))
    rng = np.random.default_rng(0)
    for n in a.sizes:
        run(n, a.lookups, a.max_distance, a.radii or [a.max_distance, 2 * a.max_distance], rng)


if __name__ == "__main__":
    main()
