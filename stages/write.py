"""Writing a variant's objects, in the worker: preview, poster, then video, each atomically.

In: encoded rows carrying `video_bytes`, `poster_bytes`, `preview_bytes`. Out: one metadata record per
row (`stages.common.variant.RECORD_SCHEMA` plus the manifest's `extra` columns), with the objects' URIs, size
and sha256, and no bytes. The driver commits the records (pipeline/commit.py); this stage never writes
one.

Layout under the output URI:
    videos/<id>/<variant>.<ext>    (mp4, or webm for vp9: the row's `video_ext`)
    posters/<id>/<variant>.jpg     previews/<id>/<variant>.webp   (animated)
    inputs/<id>/<variant>-<column>.jpg   a conditioning input (image, last_image, video) as the video saw it

The video goes last, so a video object implies its companions; and a record is returned only after its
objects are written, so a reader that follows committed records never meets a missing or half-written
video. A failed write becomes the row's `failed` state; a re-run writes it again at the same keys.
"""
from __future__ import annotations

import hashlib

from stages.contract import Stage
from stages.common.storage import filesystem, join, put_atomic
from stages.common.variant import RECORD_SCHEMA


class WriteStage(Stage):
    name = "write"
    reads = ("video_bytes", "poster_bytes", "preview_bytes", "input_preview_bytes")
    consumes = ("video_bytes", "poster_bytes", "preview_bytes", "input_preview_bytes")

    def setup(self) -> None:
        self.fs, self.root = filesystem(self.ctx.output, self.ctx.storage_options)

    def __call__(self, rows: list[dict]) -> list[dict]:
        records = []
        for r in rows:
            video, poster = r.pop("video_bytes", None), r.pop("poster_bytes", None)
            preview, inputs = r.pop("preview_bytes", None), r.pop("input_preview_bytes", None) or {}
            if video is not None:
                self.write(r, video, poster, preview, inputs)
            records.append(self.record(r))
        return records

    def write(self, r: dict, video: bytes, poster: bytes, preview: bytes | None, inputs: dict[str, bytes]) -> None:
        key = f"{r['id']}/{r['variant']}"
        ipaths = {column: join(self.root, "inputs", f"{key}-{column}.jpg") for column in inputs}
        vpath = join(self.root, "videos", f"{key}.{r.get('video_ext') or 'mp4'}")
        ppath = join(self.root, "posters", f"{key}.jpg")
        wpath = join(self.root, "previews", f"{key}.webp") if preview is not None else None
        try:
            for column, data in inputs.items():
                put_atomic(self.fs, ipaths[column], data)
            if wpath:
                put_atomic(self.fs, wpath, preview)
            put_atomic(self.fs, ppath, poster)
            put_atomic(self.fs, vpath, video)
        except Exception as e:  # noqa: BLE001 - becomes the row's state; a re-run retries it
            r.update(status="failed", error=f"write: {vpath}: {type(e).__name__}: {e}")
            return
        uri = self.fs.unstrip_protocol
        r.update(video_uri=uri(vpath), poster_uri=uri(ppath), preview_uri=uri(wpath) if wpath else None,
                 bytes=len(video), sha256=hashlib.sha256(video).hexdigest(),
                 **{f"{column}_preview_uri": uri(path) for column, path in ipaths.items()})

    def record(self, r: dict) -> dict:
        model = self.ctx.identity or {}
        rec = {k: r.get(k) for k in RECORD_SCHEMA.names}
        rec.update(run_id=self.ctx.run_id, manifest=self.ctx.manifest,
                   model_family=model.get("family"), model_path=model.get("path"),
                   model_revision=model.get("revision"), model_dtype=model.get("dtype"),
                   model_weights_hash=model.get("weights_hash"))
        # The size in the file (encode pads an odd size for H.264), only when there is a file.
        size = r.get("resolution") or f"{r['width']}x{r['height']}"
        rec["resolution"] = size if r.get("video_uri") else None
        rec["extra"] = r.get("extra") or {}
        if "first_seed" in r:  # the variant's own seed, for the driver to derive the next try's
            rec["first_seed"] = r["first_seed"]
        return rec
