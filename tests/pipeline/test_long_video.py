"""Long rows end to end on a real local Ray with builtin:tiny-skyreels-df: a 3-segment video whose MP4 has exactly
the frames asked for, a sampling actor killed mid-video that resumes from its last saved segment, and a long
row refused by a family that cannot extend."""
import io

import av
import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from pipeline.job import run_job
from pipeline.spec import JobSpecError, load_job
from tests.conftest import job_dict

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DF = {"family": "skyreels_df", "path": "builtin:tiny-skyreels-df"}
# tiny window 17 frames, overlap 9: 33 frames are 3 segments (17, +8, +8)
TINY_LONG = {"height": 32, "width": 32, "fps": 8, "num_inference_steps": 2, "num_frames": None}


def records(output):
    return {r["id"]: r for r in pads.dataset(f"{output}/metadata", format="parquet").to_table().to_pylist()}


def frame_count(uri):
    with fsspec.open(uri, "rb") as f, av.open(io.BytesIO(f.read())) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def long_job(manifest, output, **overrides):
    job = job_dict(manifest, output, **{"model": DF, "expand": {"mode": "none"}, "filter": {"min_motion": 0.0},
                                        "encode": {"keep_rejected": True}, "sample": {"batch_size": 1}, **overrides})
    job["sampling"] = {**job["sampling"], **TINY_LONG}
    return load_job(job)


def test_a_three_segment_video_has_exactly_the_frames_asked_for(ray_local, make_manifest, tmp_path):
    manifest = make_manifest([
        {"id": "three", "prompt": "a lighthouse in a storm", "seed": 1, "num_frames": 33},
        {"id": "seconds", "prompt": "a red kite over the sea", "seed": 2, "duration_s": 3.0},  # 24 frames -> 25
        {"id": "both", "prompt": "too precise", "num_frames": 33, "duration_s": 4.0},
    ], types=None)
    spec = long_job(manifest, str(tmp_path / "out"))
    run_job(spec, echo=lambda *_: None)
    recs = records(spec.output)
    assert recs["both"]["status"] == "invalid" and "give num_frames or duration_s, not both" in recs["both"]["error"]
    for rid, frames in (("three", 33), ("seconds", 25)):
        r = recs[rid]
        assert r["status"] in ("accepted", "rejected"), r["error"]
        assert r["num_frames"] == frames and r["base_num_frames"] == 17 and r["overlap_history"] == 9
        assert frame_count(r["video_uri"]) == frames
        assert r["duration_s"] == pytest.approx(frames / 8)
    # decoded, filtered and encoded a segment at a time (stages/long_video/stream.py): metrics per segment and overall
    m = dict(recs["three"]["metrics"])
    assert {"segment_0/motion", "segment_1/motion", "segment_2/motion", "motion", "scene_cuts"} <= set(m)
    assert "segment_3/motion" not in m and "segment_1/motion" in dict(recs["seconds"]["metrics"])
    # the saved segments and frame chunks are removed once the videos are written
    assert not list((tmp_path / "out" / "segments" / "three" / "0").iterdir())


def test_a_killed_sampler_resumes_from_its_last_saved_segment(ray_local, model_cache, make_manifest, tmp_path):
    import shutil

    from tests.chaos.long_video import chaos_dir

    # tests/chaos/long_video.py's folder, as the workers resolve it: $RUSHES_CHAOS_DIR when an earlier module
    # (test_cluster) set it before the session's Ray restarted, else <RUSHES_CACHE>/chaos
    chaos = chaos_dir()
    shutil.rmtree(chaos, ignore_errors=True)
    chaos.mkdir(parents=True)
    manifest = make_manifest([{"id": "killed", "prompt": "a fox in the snow kill-after:1", "seed": 5,
                               "num_frames": 33}])
    spec = long_job(manifest, str(tmp_path / "out"),
                    model={"family": "tests.chaos.long_video:ChaosSkyReelsDF", "path": "builtin:tiny-skyreels-df"})
    run_job(spec, echo=lambda *_: None)
    r = records(spec.output)["killed"]
    assert (chaos / "killed-a-fox-in-the-snow-kill-after-1").exists(), "the sampler was never killed"
    assert r["status"] in ("accepted", "rejected"), r["error"]
    assert frame_count(r["video_uri"]) == 33
    lines = (chaos / "segments.log").read_text().split()
    saved = [line for line in (chaos / "segments.log").read_text().splitlines() if line.startswith("saved")]
    # each of the 3 segments saved exactly once: none generated again after the kill
    assert sorted(line.split()[2] for line in saved) == ["0", "1", "2"]
    pids = {line.split()[3] for line in saved}
    assert len(pids) == 2, saved  # segments 0 and 1 by the killed worker, segment 2 by its replacement
    # windows started: 3, plus the one in flight when the worker died
    assert lines.count("start") == 4


def test_a_driver_that_dies_before_committing_resumes_every_segment(ray_local, model_cache, make_manifest, tmp_path,
                                                                   monkeypatch):
    """The segments outlive the video's objects until its record is committed: a run whose commits fail (as
    a driver killed between the write and the commit) leaves them, and the re-run samples no window."""
    import shutil

    from pipeline.commit import MetadataWriter
    from tests.chaos.long_video import chaos_dir

    chaos = chaos_dir()
    shutil.rmtree(chaos, ignore_errors=True)
    chaos.mkdir(parents=True)
    manifest = make_manifest([{"id": "kept", "prompt": "a fox on a frozen lake", "seed": 6, "num_frames": 33}])
    family = {"family": "tests.chaos.long_video:ChaosSkyReelsDF", "path": "builtin:tiny-skyreels-df"}

    def metadata_store_down(self, records):
        raise OSError("injected: the metadata store is down")

    with monkeypatch.context() as m:
        m.setattr(MetadataWriter, "commit", metadata_store_down)
        with pytest.raises(Exception, match="metadata store is down"):
            run_job(long_job(manifest, str(tmp_path / "out"), model=family), echo=lambda *_: None)
    folder = tmp_path / "out" / "segments" / "kept" / "0"
    assert len(list(folder.glob("*/*.npz"))) == 3  # the video was written, its segments kept
    started = (chaos / "segments.log").read_text().split().count("start")
    assert started == 3

    spec = long_job(manifest, str(tmp_path / "out"), model=family)
    run_job(spec, echo=lambda *_: None)
    r = records(spec.output)["kept"]
    assert r["status"] in ("accepted", "rejected"), r["error"]
    assert frame_count(r["video_uri"]) == 33
    assert (chaos / "segments.log").read_text().split().count("start") == started  # no window sampled again
    assert not list(folder.glob("*/*.npz"))  # removed once committed


def test_a_long_row_is_refused_by_a_family_that_cannot_extend(ray_local, make_manifest, tmp_path):
    manifest = make_manifest([{"id": "long", "prompt": "a minute of surf", "num_frames": 97},
                              {"id": "short", "prompt": "a short wave", "num_frames": 9}])
    spec = load_job(job_dict(manifest, str(tmp_path / "out"), expand={"mode": "none"}))
    run_job(spec, echo=lambda *_: None)
    r = records(spec.output)["long"]
    assert r["status"] == "invalid"
    assert "longer than family 'wan''s window of 81 frames" in r["error"] and "cannot extend" in r["error"]
    # a job file that asks a minute of a family that cannot extend is refused before any work
    with pytest.raises(JobSpecError, match="family 'wan''s window of 81 frames"):
        load_job(job_dict(manifest, str(tmp_path / "o2"), sampling={"num_frames": None, "duration_s": 60, "fps": 24}))


def test_a_job_file_asks_for_a_minute_at_24_fps(tmp_path):
    spec = load_job(job_dict("m.parquet", str(tmp_path), model={"family": "skyreels_df",
                                                              "path": "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers"},
                             sampling={"height": None, "width": None, "num_frames": None, "fps": None,
                                       "num_inference_steps": None, "duration_s": 60}))
    d = spec.sampling_defaults()
    assert (d["num_frames"], d["fps"], d["base_num_frames"], d["overlap_history"]) == (1441, 24, 97, 17)
    assert (d["height"], d["width"]) == (544, 960)


SHOTS = pa.list_(pa.struct([("prompt", pa.string()), ("duration_s", pa.float64())]))
CAST = "Mara, a tall woman in a red coat, and Tom, a boy in a blue cap"


def test_a_two_shot_storyboard_records_each_shots_frame_range(ray_local, make_manifest, tmp_path):
    manifest = make_manifest([
        {"id": "story", "prompt": CAST, "seed": 4,
         "shots": [{"prompt": "Mara walks along the beach", "duration_s": 1.0},
                   {"prompt": "Tom runs to meet her", "duration_s": 2.0}]},
        {"id": "plain", "prompt": "a quiet harbour", "seed": 5, "shots": None},
    ], types={"shots": SHOTS})
    spec = long_job(manifest, str(tmp_path / "out"), expand={"mode": "template"})
    run_job(spec, echo=lambda *_: None)
    recs = records(spec.output)
    r = recs["story"]
    assert r["status"] in ("accepted", "rejected"), r["error"]
    # 1 s at 8 fps: 9 frames; 2 s: 16 more, made in two windows that continue from the tail before them
    assert [(s["prompt"], s["first_frame"], s["end_frame"]) for s in r["shots"]] == [
        ("Mara walks along the beach", 0, 9), ("Tom runs to meet her", 9, 25)]
    assert r["num_frames"] == 25 and frame_count(r["video_uri"]) == 25
    first, second = (s["expanded_prompt"] for s in r["shots"])
    assert first.startswith(CAST + ". Mara walks") and second.startswith(CAST + ". Tom runs")
    assert first.split(", ")[-1] == second.split(", ")[-1]  # the same style for every shot
    assert "shot_cuts" in dict(r["metrics"]) and "segment_2/motion" in dict(r["metrics"])
    assert recs["plain"]["shots"] is None and recs["plain"]["num_frames"] == 17  # the tiny default


def test_storyboard_rows_are_checked(tmp_path):
    from pipeline.manifest import RowValidator

    spec = load_job(job_dict("m.parquet", str(tmp_path), model=DF, sampling=TINY_LONG))
    v = RowValidator(spec, ["id", "prompt", "shots"], {})
    shots = [{"prompt": "a", "duration_s": 1.0}, {"prompt": "b", "duration_s": 0.5}]
    row, _ = v.check({"id": "s", "prompt": "cast", "shots": shots}, 0)
    assert row["num_frames"] == 13 and [(s["first_frame"], s["end_frame"]) for s in row["shots"]] == [(0, 9), (9, 13)]
    _, bad = v.check({"id": "s", "prompt": "cast", "shots": shots, "num_frames": 33}, 0)
    assert "shots: the shots' durations make the length" in bad["error"]
    _, bad = v.check({"id": "s", "prompt": "cast", "shots": [{"prompt": " ", "duration_s": 1.0}]}, 0)
    assert bad["error"] == "shots[0].prompt: empty"
    _, bad = v.check({"id": "s", "prompt": "cast", "shots": [{"prompt": "a", "duration_s": 0.0}]}, 0)
    assert "shots[0].duration_s: must be a number of seconds above 0" in bad["error"]
    wan = RowValidator(load_job(job_dict("m.parquet", str(tmp_path))), ["id", "prompt", "shots"], {})
    _, bad = wan.check({"id": "s", "prompt": "cast", "shots": shots}, 0)
    assert "shots: family 'wan' cannot continue one shot from another" in bad["error"]
