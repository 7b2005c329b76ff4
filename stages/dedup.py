"""Near-duplicates across a library: which earlier video a new one's perceptual hash is close to.

In: `(key, phash)` pairs in the order videos are kept (the driver adds every accepted video, library
first, then the run's in commit order). Out: for a new hash, the first kept key within `max_distance`
Hamming bits, so that the first of two alike videos is kept and the rest are rejected naming it.
Hashes are `stages.filter.clip_phash` strings; the scan is linear, which is fine for the tens of
thousands of videos of one library (a 256-bit XOR and popcount each, vectorised).
"""
from __future__ import annotations

import numpy as np

from stages.filter import phash_distance


class NearDuplicateIndex:
    """Hashes kept as rows of 64-bit words in one numpy array: a lookup is one vectorised XOR and popcount
    over the whole library (a Python loop over 100k hashes cost 8 ms per video in the driver)."""

    def __init__(self, max_distance: int):
        if max_distance < 0:
            raise ValueError(f"max_distance: must be >= 0, got {max_distance}")
        self.max_distance = max_distance
        self._keys: list = []
        self._words = np.zeros((0, 0), np.uint64)
        self._length: int | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def _as_words(self, phash: str) -> np.ndarray:
        if self._length is not None and len(phash) != self._length:
            raise ValueError(f"phash of {len(phash)} hex digits, the index holds {self._length}-digit hashes")
        padded = phash.rjust(-(-len(phash) // 16) * 16, "0")
        return np.array([int(padded[i:i + 16], 16) for i in range(0, len(padded), 16)], np.uint64)

    def add(self, key, phash: str) -> None:
        """Keep `key`; later matches of its hash name it."""
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

    def _distances(self, phash: str) -> np.ndarray:
        words = self._as_words(phash)
        kept = self._words[:len(self._keys)]
        return np.bitwise_count(kept ^ words).sum(axis=1, dtype=np.int64)

    def nearest(self, phash: str) -> tuple[object, int] | None:
        """(key, distance) of the closest kept hash, the first kept on ties; None when the index is empty."""
        if not self._keys:
            self._as_words(phash)
            return None
        d = self._distances(phash)
        i = int(np.argmin(d))  # argmin returns the first of equal minima
        return self._keys[i], int(d[i])

    def match(self, phash: str):
        """The first kept key within `max_distance` bits of `phash`, or None."""
        if not self._keys:
            self._as_words(phash)
            return None
        hits = np.flatnonzero(self._distances(phash) <= self.max_distance)
        return self._keys[int(hits[0])] if len(hits) else None


__all__ = ["NearDuplicateIndex", "phash_distance"]
