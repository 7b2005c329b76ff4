"""docs/howto/add-a-stage.md's watermark stage in real jobs on a local Ray, added by its one line in the list of
stages and nothing else: it marks a short video (one window, frames held whole) and a long one (three windows,
frames streamed through storage a segment at a time) alike."""
import io

import av
import fsspec
import numpy as np
import pyarrow.dataset as pads
import pytest

from pipeline.job import run_job
from pipeline.spec import STAGES, job_spec_for
from tests.conftest import job_dict
from tests.stages.test_adding_a_stage import corner, howto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def frames_of(uri: str) -> np.ndarray:
    with fsspec.open(uri, "rb") as f, av.open(io.BytesIO(f.read())) as c:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in c.decode(c.streams.video[0])])


def run(stages, manifest, output):
    job = job_dict(manifest, output, model={"family": "skyreels_df", "path": "builtin:tiny-skyreels-df"},
                   expand={"mode": "none"}, filter={"min_motion": None, "max_flow_residual": None,
                                                    "max_flicker": None, "min_contrast": None},
                   encode={"keep_rejected": True, "preset": "ultrafast"})
    job["sampling"] = {**job["sampling"], "height": 64, "width": 64, "fps": 8, "num_inference_steps": 2,
                       "num_frames": None}
    spec = job_spec_for(stages).model_validate(job)
    run_job(spec, echo=lambda *_: None)
    return {r["id"]: r for r in pads.dataset(f"{output}/metadata", format="parquet").to_table().to_pylist()}


def test_a_new_frame_stage_works_for_a_short_and_a_long_row(ray_local, make_manifest, tmp_path):
    _, with_watermark = howto()
    manifest = make_manifest([{"id": "short", "prompt": "a harbour", "seed": 1, "num_frames": 17},
                              {"id": "long", "prompt": "a lighthouse", "seed": 2, "num_frames": 33}], types=None)
    plain = run(STAGES, manifest, str(tmp_path / "plain"))
    marked = run(with_watermark, manifest, str(tmp_path / "marked"))
    for rid, frames in (("short", 17), ("long", 33)):
        a, b = plain[rid], marked[rid]
        assert b["status"] in ("accepted", "rejected"), b["error"]
        assert b["params_hash"] != a["params_hash"]  # the watermark's text is a pixel setting
        before, after = frames_of(a["video_uri"]).astype(int), frames_of(b["video_uri"]).astype(int)
        assert len(after) == frames
        # every frame has the white text in its corner; away from it the pixels are the model's
        lift = corner(after).max(axis=(1, 2, 3)) - corner(before).max(axis=(1, 2, 3))
        assert (corner(after).max(axis=(1, 2, 3)) >= 230).all() and lift.mean() > 20, lift
        assert np.abs(after[:, :24] - before[:, :24]).mean() < 3
    assert "segment_2/motion" in dict(marked["long"]["metrics"])  # made in three windows, streamed
