"""Near-duplicates: two variants that came out alike are matched to the first; different ones are not; and
the index answers exactly what a linear scan over every kept hash answers."""
import numpy as np
import pytest

from stages.media.dedup import UNINDEXED_MAX, NearDuplicateIndex
from stages.media.quality import clip_phash


def panning(seed, t=17, h=64, w=96, shift=0):
    """A blocky random grey texture sliding left one pixel per frame."""
    cells = np.random.default_rng(seed).integers(0, 256, size=(h // 8, (w + t) // 8 + 1))
    big = np.kron(cells, np.ones((8, 8))).astype(np.uint8)
    return np.stack([big[:, i + shift:i + shift + w] for i in range(t)])


@pytest.fixture(scope="module")
def hashes():
    a = panning(seed=5)
    alike = np.clip(a + np.random.default_rng(1).normal(0, 3, a.shape), 0, 255).astype(np.uint8)
    return {"a": clip_phash(a), "alike": clip_phash(alike), "shifted": clip_phash(panning(seed=5, shift=1)),
            "other": clip_phash(panning(seed=6))}


def test_first_is_kept_and_alike_ones_name_it(hashes):
    index = NearDuplicateIndex(max_distance=24)
    assert index.within(hashes["a"]) is None
    index.add(("lib", 0), hashes["a"])
    assert index.within(hashes["alike"])[0] == ("lib", 0)
    assert index.within(hashes["shifted"])[0] == ("lib", 0)
    assert index.within(hashes["other"]) is None
    index.add(("other", 0), hashes["other"])
    index.add(("alike", 0), hashes["alike"])  # a later alike one never displaces the first
    assert index.within(hashes["a"]) == (("lib", 0), 0) and len(index) == 3


def test_nearest_answers_within_its_radius_only(hashes):
    index = NearDuplicateIndex(max_distance=0)
    assert index.nearest(hashes["a"], 256) is None
    index.add("a", hashes["a"])
    key, d = index.nearest(hashes["alike"], 256)
    assert key == "a" and 0 < d <= 8
    assert index.nearest(hashes["alike"], d) == ("a", d) and index.nearest(hashes["alike"], d - 1) is None
    assert index.within(hashes["a"]) == ("a", 0) and index.within(hashes["alike"]) is None


def test_bad_hashes_and_radii_are_refused(hashes):
    index = NearDuplicateIndex(24)
    index.add("a", hashes["a"])
    with pytest.raises(ValueError, match="hex digits"):
        index.within(hashes["a"][:16])
    with pytest.raises(ValueError, match="empty"):
        index.add("b", "")
    with pytest.raises(ValueError, match="radius"):
        index.nearest(hashes["a"], -1)
    with pytest.raises(ValueError, match="max_distance"):
        NearDuplicateIndex(-1)


def flipped(bits: np.ndarray, k: int, rng) -> np.ndarray:
    out = bits.copy()
    out[rng.choice(len(bits), k, replace=False)] ^= 1
    return out


def as_hex(bits: np.ndarray) -> str:
    return np.packbits(bits).tobytes().hex()


@pytest.mark.parametrize("nbits,skewed", [(256, False), (256, True), (64, False)])
def test_answers_are_those_of_a_linear_scan(nbits, skewed):
    """Random hashes, and near copies of kept ones with k bits flipped for k around every radius tested,
    looked up between adds as the driver does; some hashes are kept twice (ties go to the first). Skewed:
    most bits are the same in every hash, so that buckets are full (perceptual hashes are not uniform)."""
    rng = np.random.default_rng(nbits + skewed)
    radii = [0, 1, 8, 15, 16, 24, 31, 32, 40, 48, 100]
    index = NearDuplicateIndex(max_distance=24)
    steps = 3 * UNINDEXED_MAX + 500  # the bucket tables are updated three times, then a tail
    kept = np.zeros((steps, nbits), np.uint8)
    common = rng.integers(0, 2, nbits).astype(np.uint8)
    for n in range(steps):
        choice = rng.random()
        if choice < 0.4 or not n:
            bits = rng.integers(0, 2, nbits).astype(np.uint8)
            if skewed:
                bits[:nbits * 3 // 4] = common[:nbits * 3 // 4]
        elif choice < 0.45:
            bits = kept[rng.integers(n)]
        else:
            bits = flipped(kept[rng.integers(n)], int(rng.choice(radii[:-1]) + rng.integers(-2, 3)) % nbits,
                           rng)
        phash = as_hex(bits)
        if n % 3 == 0:  # the scan: every kept hash's distance; the first of the closest
            d = (kept[:n] != bits).sum(axis=1)
            for r in radii:
                expected = (int(np.argmin(d)), int(d.min())) if len(d) and d.min() <= r else None
                assert index.nearest(phash, r) == expected, (n, r)
            assert index.within(phash) == index.nearest(phash, 24)
        index.add(n, phash)
        kept[n] = bits
    assert len(index) == steps
