"""Near-duplicates across a library: which earlier video a new one's perceptual hash is close to.

In: `(key, phash)` pairs in the order videos are kept (the driver adds every accepted video, library
first, then the run's in commit order). Out: for a new hash, the first kept key within `max_distance`
Hamming bits, so that the first of two alike videos is kept and the rest are rejected naming it.
Hashes are `stages.filter.clip_phash` strings; the scan is linear, which is fine for the tens of
thousands of videos of one library (a 256-bit XOR and popcount each).
"""
from __future__ import annotations

from stages.filter import phash_distance


class NearDuplicateIndex:
    def __init__(self, max_distance: int):
        if max_distance < 0:
            raise ValueError(f"max_distance: must be >= 0, got {max_distance}")
        self.max_distance = max_distance
        self._keys: list = []
        self._hashes: list[int] = []
        self._length: int | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def _as_int(self, phash: str) -> int:
        if self._length is not None and len(phash) != self._length:
            raise ValueError(f"phash of {len(phash)} hex digits, the index holds {self._length}-digit hashes")
        return int(phash, 16)

    def add(self, key, phash: str) -> None:
        """Keep `key`; later matches of its hash name it."""
        value = self._as_int(phash)
        self._length = len(phash)
        self._keys.append(key)
        self._hashes.append(value)

    def nearest(self, phash: str) -> tuple[object, int] | None:
        """(key, distance) of the closest kept hash, the first kept on ties; None when the index is empty."""
        value = self._as_int(phash)
        best = None
        for key, h in zip(self._keys, self._hashes):
            d = (value ^ h).bit_count()
            if best is None or d < best[1]:
                best = (key, d)
        return best

    def match(self, phash: str):
        """The first kept key within `max_distance` bits of `phash`, or None."""
        value = self._as_int(phash)
        for key, h in zip(self._keys, self._hashes):
            if (value ^ h).bit_count() <= self.max_distance:
                return key
        return None


__all__ = ["NearDuplicateIndex", "phash_distance"]
