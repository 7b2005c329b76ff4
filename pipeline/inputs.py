"""A row's conditioning inputs checked while planning, in the driver, one row at a time.

In: a manifest row with its settings resolved, whose `image`, `last_image` or `video` columns name files. Out:
None, with the row given each input's URI as read, the sha256 of its bytes, a clip's frame count and the job's
`conditioning:` settings (all of them in the record, the hashes and settings in `params_hash`); or the reason
the row is invalid, naming the column and the URI (or the family and the checkpoint that cannot take it).
No model is loaded: the family answers from the checkpoint's configs (`conditionings`), and the files are only
read, hashed and decoded once (stages/media/conditioning.py).
"""
from __future__ import annotations

from stages.media.conditioning import COLUMNS, InputError, probe, resolve_uri
from stages.models.references import pipeline_class_of

WHAT = {"image": "a first image", "last_image": "a last image", "video": "a clip to continue"}


class InputCheck:
    def __init__(self, spec, base: str):
        self.family, self.path = spec.family, spec.model.path
        self.options = spec.conditioning
        self.storage_options = spec.storage_options
        self.base = base  # relative paths are read from the manifest's folder

    def model_named(self) -> str:
        declared = pipeline_class_of(self.path)
        return f"family '{self.family.name}' with model {self.path}" + (f" ({declared})" if declared else "")

    def check(self, row: dict) -> str | None:
        given = [c for c in COLUMNS if row.get(c)]
        allowed = self.family.conditionings(self.path)
        refused = [c for c in given if c not in allowed]
        if refused:
            takes = ", ".join(c for c in COLUMNS if c in allowed) or "no image or video (text only)"
            return (f"{refused[0]}: {self.model_named()} cannot take {WHAT[refused[0]]}; it takes {takes}. "
                    "Use a checkpoint that does (docs/models.md: conditioning)")
        missing = [c for c in sorted(self.family.required_conditionings(self.path), key=COLUMNS.index)
                   if c not in given]
        if missing:
            return f"{missing[0]}: {self.model_named()} needs {WHAT[missing[0]]} in every row; this row has none"
        if not given:
            return None
        for column in given:
            uri = resolve_uri(row[column], self.base)
            try:
                found = probe(column, uri, self.storage_options, self.options.max_pixels)
            except InputError as e:
                return str(e)
            row.update({column: uri, f"{column}_sha256": found.sha256})
            if column == "video":
                row["video_frames"] = found.frames
        row["conditioning_resize"] = self.options.resize
        if self.options.strength is not None:
            row["conditioning_strength"] = self.options.strength
        return None
