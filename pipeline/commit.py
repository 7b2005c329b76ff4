"""Writing outputs: video objects first, then the metadata records that point to them.

Layout under the output URI:
    videos/<id>/<variant>.<ext>    (mp4, or webm for vp9: the row's `video_ext`)
    posters/<id>/<variant>.jpg     previews/<id>/<variant>.webp   (animated)
    metadata/part-<run_id>-<seq>.parquet   (one file per committed batch of records)
    runs/<run_id>/job.yaml                 (the resolved job spec)

Order of writes: a worker writes a variant's preview, poster and then video (each atomically; the video
last, so a video object implies its companions) and only then returns its record; the driver alone
writes records, one Parquet object per committed batch, atomically. A reader that follows the metadata
therefore never meets a missing or half-written video.
"""
from __future__ import annotations

import hashlib
import io
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import filesystem, join, put_atomic

FLOAT_MAP = pa.map_(pa.string(), pa.float64())
RECORD_FIELDS = [
    ("run_id", pa.string()), ("id", pa.string()), ("variant", pa.int32()), ("row", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("reasons", pa.list_(pa.string())),
    ("prompt", pa.string()), ("expanded_prompt", pa.string()), ("negative_prompt", pa.string()),
    ("seed", pa.int64()), ("height", pa.int32()), ("width", pa.int32()), ("num_frames", pa.int32()),
    ("fps", pa.int32()), ("num_inference_steps", pa.int32()), ("guidance_scale", pa.float64()),
    ("style", pa.string()), ("tags", pa.list_(pa.string())),
    ("model_family", pa.string()), ("model_path", pa.string()), ("model_revision", pa.string()),
    ("model_dtype", pa.string()), ("model_weights_hash", pa.string()), ("params_hash", pa.string()),
    ("video_uri", pa.string()), ("poster_uri", pa.string()), ("preview_uri", pa.string()),
    ("bytes", pa.int64()), ("sha256", pa.string()),
    ("duration_s", pa.float64()), ("resolution", pa.string()), ("codec", pa.string()),
    ("metrics", FLOAT_MAP), ("phash", pa.string()), ("stage_seconds", FLOAT_MAP),
    ("attempt", pa.int32()), ("attempts", pa.list_(pa.string())),
    ("manifest", pa.string()), ("committed_at", pa.timestamp("us", tz="UTC")),
]
RECORD_SCHEMA = pa.schema(RECORD_FIELDS)
STATUSES = ("accepted", "rejected", "invalid", "failed")


def record_schema(extra: pa.Schema) -> pa.Schema:
    """The core record fields plus the manifest's extra columns, carried through with their types."""
    clashing = [f.name for f in extra if f.name in RECORD_SCHEMA.names]
    fields = list(RECORD_SCHEMA) + [f if f.name not in clashing else pa.field(f"manifest_{f.name}", f.type)
                                    for f in extra]
    return pa.schema(fields)


class ObjectWriter:
    """Worker side: writes each encoded variant's objects, returns its metadata record (no bytes)."""

    def __init__(self, output: str, run_id: str, model: dict, manifest: str,
                 storage_options: dict | None = None):
        self.output, self.run_id, self.model, self.manifest = output, run_id, model, manifest
        self.storage_options = storage_options or {}
        self._fs = None

    def setup(self) -> None:
        self._fs, self._root = filesystem(self.output, self.storage_options)

    def __call__(self, rows: list[dict]) -> list[dict]:
        if self._fs is None:
            self.setup()
        records = []
        for r in rows:
            video, poster = r.pop("video_bytes", None), r.pop("poster_bytes", None)
            preview = r.pop("preview_bytes", None)
            if video is not None:
                key = f"{r['id']}/{r['variant']}"
                vpath = join(self._root, "videos", f"{key}.{r.get('video_ext') or 'mp4'}")
                ppath = join(self._root, "posters", f"{key}.jpg")
                wpath = join(self._root, "previews", f"{key}.webp") if preview is not None else None
                try:
                    if wpath:
                        put_atomic(self._fs, wpath, preview)
                    put_atomic(self._fs, ppath, poster)
                    put_atomic(self._fs, vpath, video)
                except Exception as e:  # noqa: BLE001 - becomes the row's state; a re-run retries it
                    r.update(status="failed", error=f"commit: writing {vpath}: {type(e).__name__}: {e}")
                else:
                    r.update(video_uri=self._fs.unstrip_protocol(vpath), poster_uri=self._fs.unstrip_protocol(ppath),
                             preview_uri=self._fs.unstrip_protocol(wpath) if wpath else None,
                             bytes=len(video), sha256=hashlib.sha256(video).hexdigest())
            records.append(self.record(r))
        return records

    def record(self, r: dict) -> dict:
        rec = {k: r.get(k) for k in RECORD_SCHEMA.names}
        rec.update(run_id=self.run_id, manifest=self.manifest,
                   model_family=self.model["family"], model_path=self.model["path"],
                   model_revision=self.model["revision"], model_dtype=self.model["dtype"],
                   model_weights_hash=self.model["weights_hash"])
        # The size in the file (encode pads an odd size for H.264), only when there is a file.
        size = r.get("resolution") or f"{r['width']}x{r['height']}"
        rec["resolution"] = size if r.get("video_uri") else None
        rec["extra"] = r.get("extra") or {}
        if "first_seed" in r:  # the variant's own seed, for the driver to derive the next try's
            rec["first_seed"] = r["first_seed"]
        return rec


def invalid_record(row: dict) -> dict:
    return {"row": row["row"], "id": row["id"], "variant": -1, "prompt": row["prompt"], "status": "invalid",
            "error": row["error"], "extra": row["extra"]}


class MetadataWriter:
    """Driver side: the only writer of records; one atomic Parquet object per committed batch."""

    def __init__(self, output: str, run_id: str, schema: pa.Schema, storage_options: dict | None = None):
        self.fs, self.root = filesystem(output, storage_options)
        self.run_id, self.schema, self.seq = run_id, schema, 0

    def commit(self, records: list[dict]) -> str | None:
        if not records:
            return None
        now = datetime.now(timezone.utc)
        rows = []
        for rec in records:
            flat = {k: v for k, v in rec.items() if k != "extra"}
            for k, v in (rec.get("extra") or {}).items():
                flat[k if k not in RECORD_SCHEMA.names else f"manifest_{k}"] = v
            flat["committed_at"] = now
            flat["run_id"] = self.run_id  # the run that commits a record owns it (invalid rows too)
            rows.append(flat)
        table = pa.Table.from_pylist(rows, schema=self.schema)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path = join(self.root, "metadata", f"part-{self.run_id}-{self.seq:06d}.parquet")
        put_atomic(self.fs, path, buf.getvalue())
        self.seq += 1
        return path

    def save_text(self, relpath: str, text: str) -> str:
        path = join(self.root, relpath)
        put_atomic(self.fs, path, text.encode())
        return self.fs.unstrip_protocol(path)
