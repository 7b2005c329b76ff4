"""The one place that resolves and checks a variant's sampling settings.

`resolve_settings(given, fallback, family)`: settings the caller gives, the rest from `fallback`. It serves
twice: the job file's `sampling:` over the family's recommendation for the model (`job_defaults`), and then a
manifest row's columns over those job defaults (pipeline/manifest.py). A length asked for in seconds
(`duration_s`) becomes `num_frames` on the family's frame rule, at the fps in use; a storyboard's shots make
the length and each shot's frame range. `family.check_row` then says whether the model can make it.
"""
from __future__ import annotations

from stages.long_video.windows import frames_for, shot_latents, shot_ranges


def resolve_settings(given: dict, fallback: dict, family) -> dict:
    """`given` (None = unset) over `fallback`; with `num_frames` from a duration or from shots."""
    d = {**given, **{k: v for k, v in fallback.items() if given.get(k) is None}}
    stride = family.temporal_stride
    if d.get("shots"):  # a storyboard: its length and each shot's frame range
        ranges = shot_ranges(shot_latents([s["duration_s"] for s in d["shots"]], d["fps"], stride), stride)
        d["shots"] = [{**s, "expanded_prompt": None, "first_frame": a, "end_frame": b}
                      for s, (a, b) in zip(d["shots"], ranges)]
        d["num_frames"] = ranges[-1][1]
    elif given.get("num_frames") is None:
        duration = given.get("duration_s") or fallback.get("duration_s")
        if duration is not None:  # the length asked for, in frames at the fps used
            d["num_frames"] = frames_for(duration, d["fps"], stride)
    return d


def job_defaults(sampling: dict, family, path: str) -> dict:
    """The job file's `sampling:` with every unset setting taken from the family's recommendation for `path`."""
    return resolve_settings(sampling, family.recommended(path), family)
