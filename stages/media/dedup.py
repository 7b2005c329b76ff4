"""Near-duplicates across a library: which earlier video a new one's perceptual hash is close to.

In: `(key, phash)` pairs in the order videos are kept (the driver adds every accepted video, library
first, then the run's in commit order). Out: for a new hash, the closest kept key within `max_distance`
Hamming bits (the first kept on ties), so that the first of two alike videos is kept and the rest are
rejected naming it (`within`); `nearest` answers the same for another radius. Hashes are `clip_phash` strings (stages/media/quality.py), of one length per index.

A lookup is sublinear: multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space
with multi-index hashing", CVPR 2012). Each hash is cut into 16-bit substrings, one bucket table per
substring; a hash within r bits of the query has, by pigeonhole, some substring within r // tables bits
of the query's, so probing those buckets finds every candidate, and the exact full distance decides.
The answers are those of a linear scan; at radii where probing would cost about as much (above 50 bits
for 256-bit hashes, see MAX_PROBES), the lookup is that linear scan.
"""
from __future__ import annotations

from math import comb

import numpy as np

SUBSTRING_BITS = 16  # 2**16 buckets a table: dense offset arrays, about 15 uniform hashes a bucket at 1M
BUCKETS = 1 << SUBSTRING_BITS
# Every 16-bit XOR mask, fewest bits first: a table's probes within s bits are its value ^ MASKS[:ball(s)].
MASKS = np.argsort(np.bitwise_count(np.arange(BUCKETS, dtype=np.uint16)), kind="stable").astype(np.uint16)
# A lookup verifies about probes / 65536 of uniform hashes, each several times the cost of a row of a
# linear scan; past this many probes (radius 51 at 256 bits), the linear scan is the safer bet.
MAX_PROBES = 4096
# Hashes added since the tables were last updated are scanned linearly; updating the tables costs a copy
# of them (16 x 4 bytes per hash), so it is done once per this many adds.
UNINDEXED_MAX = 1024


def ball(s: int) -> int:
    """How many substring values lie within s bits of one (0 for s < 0)."""
    return sum(comb(SUBSTRING_BITS, i) for i in range(min(s, SUBSTRING_BITS) + 1))


def hamming(rows: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Bits that differ between each row of 64-bit words and `words`. Summed column by column: numpy's
    sum(axis=1) over 4 columns took 10x as long as the XOR and popcount."""
    counts = np.bitwise_count(rows ^ words)
    return sum(counts[:, j].astype(np.int64) for j in range(counts.shape[1]))


class NearDuplicateIndex:
    """Hashes kept as rows of 64-bit words in one numpy array. Each 16-bit substring column t has a bucket
    table: the row numbers `_ids[t]` grouped by substring value v, bucket v being
    `_ids[t, _offsets[t, v]:_offsets[t, v + 1]]`. Rows from `_indexed` on are not in the tables yet."""

    def __init__(self, max_distance: int):
        if max_distance < 0:
            raise ValueError(f"max_distance: must be >= 0, got {max_distance}")
        self.max_distance = max_distance
        self._keys: list = []
        self._words = np.zeros((0, 0), np.uint64)
        self._length: int | None = None
        self._indexed = 0
        self._ids: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def _as_words(self, phash: str) -> np.ndarray:
        if not phash:
            raise ValueError("phash: empty")
        if self._length is not None and len(phash) != self._length:
            raise ValueError(f"phash of {len(phash)} hex digits, the index holds {self._length}-digit hashes")
        padded = phash.rjust(-(-len(phash) // 16) * 16, "0")
        return np.frombuffer(bytes.fromhex(padded), ">u8").astype(np.uint64)

    def add(self, key, phash: str) -> None:
        """Keep `key`; later lookups of a hash near this one name it."""
        words = self._as_words(phash)
        self._length = len(phash)
        n = len(self._keys)
        if n == len(self._words):  # grow by doubling: adding stays amortised O(1)
            grown = np.zeros((max(16, 2 * n), len(words)), np.uint64)
            if n:
                grown[:n] = self._words[:n]
            self._words = grown
        self._words[n] = words
        self._keys.append(key)
        if n + 1 - self._indexed >= UNINDEXED_MAX:
            self._index_new_rows()

    def _index_new_rows(self) -> None:
        n0, n = self._indexed, len(self._keys)
        subs = self._words[n0:n].view(np.uint16).astype(np.int64)  # (new rows, tables)
        tables = subs.shape[1]
        if self._ids is None:
            self._ids = np.zeros((tables, 0), np.int32)
            self._offsets = np.zeros((tables, BUCKETS + 1), np.int32)
        rows = np.arange(n0, n, dtype=np.int32)
        ids = np.empty((tables, n), np.int32)
        for t in range(tables):
            # Each new row goes at the end of its bucket; in bucket order, since the rows of buckets that
            # are empty so far go in at one same position.
            order = np.argsort(subs[:, t], kind="stable")
            ids[t] = np.insert(self._ids[t], self._offsets[t, subs[order, t] + 1], rows[order])
        self._ids = ids
        counts = np.bincount((subs + np.arange(tables) * BUCKETS).ravel(), minlength=tables * BUCKETS)
        self._offsets[:, 1:] += np.cumsum(counts.reshape(tables, BUCKETS), axis=1)
        self._indexed = n

    def _candidates(self, words: np.ndarray, radius: int) -> np.ndarray | None:
        """Row numbers that include every kept hash within `radius` bits of `words`, or None where probing
        would cost more than a linear scan."""
        unindexed = np.arange(self._indexed, len(self._keys))
        if self._ids is None:
            return unindexed
        tables = len(self._ids)
        # Refined pigeonhole (Norouzi et al.): with radius = s * tables + a, a hash within radius has one of
        # the first a + 1 substrings within s bits, or one of any within s - 1 bits.
        s, a = divmod(radius, tables)
        probes = np.array([ball(s)] * (a + 1) + [ball(s - 1)] * (tables - a - 1))
        if probes.sum() > MAX_PROBES:
            return None
        table = np.repeat(np.arange(tables), probes)
        within_table = np.arange(len(table)) - np.repeat(np.cumsum(probes) - probes, probes)
        bucket = (words.view(np.uint16)[table] ^ MASKS[within_table]).astype(np.int64)
        starts = self._offsets[table, bucket] + table * self._indexed  # positions in self._ids, flattened
        sizes = self._offsets[table, bucket + 1] - self._offsets[table, bucket]
        positions = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
        return np.concatenate([np.take(self._ids, positions), unindexed])

    def nearest(self, phash: str, radius: int) -> tuple[object, int] | None:
        """(key, distance) of the closest kept hash when it is within `radius` bits, the first kept on
        ties; None when none is."""
        if radius < 0:
            raise ValueError(f"radius: must be >= 0, got {radius}")
        words = self._as_words(phash)
        if not self._keys:
            return None
        kept = self._words[:len(self._keys)]
        rows = self._candidates(words, radius)
        if rows is None:
            rows = np.arange(len(kept))
            d = hamming(kept, words)
        else:
            d = hamming(np.take(kept, rows, axis=0), words)  # take: 5x faster than kept[rows] here
        if not len(d) or d.min() > radius:  # no candidates, or none close enough
            return None
        best = int(d.min())
        first = int(rows[d == best].min())  # the first kept of the closest (rows may repeat across tables)
        return self._keys[first], best

    def within(self, phash: str) -> tuple[object, int] | None:
        """(key, distance) of the closest kept hash within `max_distance` bits, the first kept on ties:
        the one a new video duplicates. None when it duplicates none."""
        return self.nearest(phash, self.max_distance)


__all__ = ["NearDuplicateIndex"]
