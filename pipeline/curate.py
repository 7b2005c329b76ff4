"""Decisions the driver makes on finished variants before committing them, because they need more than one
row: near-duplicates across the library, and sampling a rejected variant again with a new seed.

In: records coming back from the pipeline (filtered, encoded, objects written). Out: the records to commit
now, and the variant rows to send through the pipeline again.

- Near-duplicates: every accepted video's perceptual hash (`phash`, from the filter) is looked up among the
  library's accepted videos and this run's, in commit order (stages/media/dedup.py, a multi-index hash: the
  distance to the nearest is recorded when within twice the threshold, at most 48 bits). The first is kept; a later one within
  `filter.max_duplicate_distance` bits is rejected with a reason naming the other (id/variant), and its
  objects are removed unless `encode.keep_rejected`.
- `filter.retries_on_reject: N`: a rejected variant is not committed but sampled again with a seed derived
  from its own, up to N times. Its record, when committed, keeps the seed that was used and, in `attempts`,
  every earlier try with its reasons. Its `params_hash` stays that of the variant as asked for, so a re-run
  skips it like any other committed variant.
"""
from __future__ import annotations

import hashlib

from pipeline.library import LibraryState
from pipeline.spec import JobSpec
from stages.common.storage import filesystem, remove
from stages.media.dedup import NearDuplicateIndex
from stages.common.variant import PLANNED_FIELDS

REPORT_RADIUS_MAX = 48  # bits: stages/media/dedup.py probes buckets up to about here, then scans


def retry_seed(seed: int, attempt: int) -> int:
    """A new seed for try `attempt` (1, 2, ...), derived so that a re-run tries the same seeds."""
    digest = hashlib.sha256(f"{seed}/retry/{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


class Curator:
    def __init__(self, spec: JobSpec, state: LibraryState | None = None):
        """`state`: the library's current records; videos this run regenerates are marked superseded there
        (their old videos are about to be replaced, so they are not duplicates to compare with)."""
        self.spec = spec
        self.retries = spec.filter.retries_on_reject
        distance = spec.filter.max_duplicate_distance
        self.index = NearDuplicateIndex(distance) if distance is not None else None
        # `duplicate_bits` is recorded when the nearest kept video is within this many bits: twice the
        # threshold, up to where the index's lookup stops being sublinear (a video further from every
        # other is no near-duplicate of anything, and its exact distance would cost a scan of the library).
        self.report_radius = None if distance is None else min(2 * distance, max(distance, REPORT_RADIUS_MAX))
        if self.index is not None and state is not None:
            for name, phash in state.kept_videos():
                self.index.add(name, phash)
        self.fs = None

    def _remove_objects(self, rec: dict) -> None:
        if self.fs is None:
            self.fs, _ = filesystem(self.spec.output, self.spec.storage_options)
        for field in ("video_uri", "poster_uri", "preview_uri"):
            if rec.get(field):
                remove(self.fs, rec[field])
                rec[field] = None
        rec.update(bytes=None, sha256=None, resolution=None)

    def _check_duplicate(self, rec: dict) -> None:
        """Records `metrics["duplicate_bits"]` (distance to the nearest kept video, when within
        `report_radius`); rejects within `max_duplicate_distance` unless the metric is score-only."""
        if self.index is None or rec["status"] != "accepted" or not rec.get("phash"):
            return
        found = self.index.nearest(rec["phash"], self.report_radius)
        if found:
            rec["metrics"] = {**(rec.get("metrics") or {}), "duplicate_bits": float(found[1])}
        if found and found[1] <= self.index.max_distance and "duplicate" not in self.spec.filter.score_only:
            other, bits = found
            rec["status"] = "rejected"
            rec["reasons"] = list(rec.get("reasons") or []) + [
                f"near-duplicate: {bits} of {len(rec['phash']) * 4} hash bits from {other} "
                f"(max_duplicate_distance {self.index.max_distance})"]
            if not self.spec.encode.keep_rejected:
                self._remove_objects(rec)
        else:
            self.index.add(f"{rec['id']}/{rec['variant']}", rec["phash"])

    def review(self, records: list[dict]) -> tuple[list[dict], list[dict]]:
        """(records to commit, variant rows to sample again)."""
        commit, again = [], []
        for rec in records:
            self._check_duplicate(rec)
            attempt = rec.get("attempt") or 0
            if rec["status"] == "rejected" and attempt < self.retries:
                if rec.get("video_uri") and not self.spec.encode.keep_rejected:
                    self._remove_objects(rec)
                tried = list(rec.get("attempts") or []) + [
                    f"seed {rec['seed']}: {'; '.join(rec.get('reasons') or [])}"]
                first_seed = rec.get("first_seed", rec["seed"])
                row = {k: rec.get(k) for k in PLANNED_FIELDS}  # the rest are results, reset for the new try
                row.update(seed=retry_seed(first_seed, attempt + 1), first_seed=first_seed, attempt=attempt + 1,
                           attempts=tried, status="pending", error=None, reasons=[], metrics={},
                           stage_seconds={k: v for k, v in (rec.get("stage_seconds") or {}).items()
                                          if k == "expand"},
                           spans=list(rec.get("spans") or []))  # the GPU time of every try stays on the record
                again.append(row)
                continue
            commit.append(rec)
        return commit, again
