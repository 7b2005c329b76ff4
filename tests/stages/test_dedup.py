"""Near-duplicates: two variants that came out alike are matched to the first; different ones are not."""
import numpy as np
import pytest

from pipeline.spec import FilterSpec
from stages.dedup import NearDuplicateIndex
from stages.filter import FilterStage
from tests.stages.test_filter import panning


def phash(frames):
    row = {"id": "c", "variant": 0, "status": "pending", "frames": frames, "prompt": "p", "stage_seconds": {}}
    return FilterStage(FilterSpec())([row])[0]["phash"]


@pytest.fixture(scope="module")
def hashes():
    a = panning(seed=5)
    alike = np.clip(a.astype(float) + np.random.default_rng(1).normal(0, 3, a.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(a, 1, axis=2)  # one pixel over: the same shot
    return {"a": phash(a), "alike": phash(alike), "shifted": phash(shifted), "other": phash(panning(seed=6))}


def test_first_is_kept_and_alike_ones_name_it(hashes):
    index = NearDuplicateIndex(max_distance=24)
    assert index.match(hashes["a"]) is None
    index.add(("lib", 0), hashes["a"])
    assert index.match(hashes["alike"]) == ("lib", 0)
    assert index.match(hashes["shifted"]) == ("lib", 0)
    assert index.match(hashes["other"]) is None
    index.add(("other", 0), hashes["other"])
    index.add(("alike", 0), hashes["alike"])  # a later alike one never displaces the first
    assert index.match(hashes["a"]) == ("lib", 0) and len(index) == 3


def test_nearest_gives_the_distance_and_zero_distance_is_exact_only(hashes):
    index = NearDuplicateIndex(max_distance=0)
    assert index.nearest(hashes["a"]) is None
    index.add("a", hashes["a"])
    key, d = index.nearest(hashes["alike"])
    assert key == "a" and 0 < d <= 8
    assert index.match(hashes["a"]) == "a" and index.match(hashes["alike"]) is None


def test_hashes_of_another_length_are_refused(hashes):
    index = NearDuplicateIndex(24)
    index.add("a", hashes["a"])
    with pytest.raises(ValueError, match="hex digits"):
        index.match(hashes["a"][:16])
    with pytest.raises(ValueError, match="max_distance"):
        NearDuplicateIndex(-1)
