"""docs/howto/add-a-stage.md, run as written: its stage file works on a short video (frames held whole) and a
long one (frames in storage, chunk by chunk), its list of stages composes a strict job-file section whose
text joins params_hash, and a misplaced stage is refused naming both stages. tests/pipeline/test_new_stage.py
runs it in real jobs."""
import re
import types
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import pipeline.spec
from pipeline.spec import format_errors, job_spec_for
from stages.contract import ContractError, check_chain
from stages.media.frames import FrameArray, FrameChunks, write_chunk
from stages.common.storage import filesystem

HOWTO = Path(__file__).resolve().parents[2] / "docs" / "howto" / "add-a-stage.md"


def howto():
    """The page's stage module (exec'd as written, never imported: Ray pickles its classes by value) and
    its list of stages, evaluated against pipeline/spec.py's names."""
    blocks = re.findall(r"```python\n(.*?)```", HOWTO.read_text(), re.S)
    module = types.ModuleType("watermark_example")
    exec(compile(blocks[0], f"{HOWTO} (stages/watermark.py)", "exec"), module.__dict__)
    names = {**vars(pipeline.spec), "WatermarkStage": module.WatermarkStage}
    exec(compile(blocks[1], f"{HOWTO} (pipeline/spec.py)", "exec"), names)
    return module, names["STAGES"]


@pytest.fixture(scope="module")
def watermark():
    return howto()


def corner(frames: np.ndarray) -> np.ndarray:
    return frames[:, -14:-2, 2:60]


def test_the_stage_marks_short_frames_and_passes_other_rows_through(watermark):
    module, _ = watermark
    stage = module.WatermarkStage(module.WatermarkOptions(text="draft"))
    stage.setup()
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    rows = [{"status": "accepted", "frames": FrameArray(frames.copy())},
            {"status": "rejected", "frames": FrameArray(frames.copy())},
            {"status": "accepted", "frames": None}]
    out = stage(rows)
    marked = out[0]["frames"].array
    assert corner(marked).max() == 255 and not marked[:, :20].any()  # text in the corner only
    assert not out[1]["frames"].array.any()
    assert out[2]["status"] == "failed" and out[2]["error"].startswith("watermark: AttributeError")
    assert not stage.holds_model and stage.options.pixel_settings() == {"watermark": "draft"}


def test_the_stage_marks_a_long_video_chunk_by_chunk_in_storage(watermark, tmp_path):
    module, _ = watermark
    fs, root = filesystem(str(tmp_path))
    bounds = [(0, 9), (9, 17), (17, 25)]
    uris = [write_chunk(fs, f"{root}/segments/a/0/abc/frames/{k:04d}.npy", np.zeros((b - a, 48, 64, 3), np.uint8))
            for k, (a, b) in enumerate(bounds)]
    stage = module.WatermarkStage(module.WatermarkOptions())
    out = stage([{"status": "accepted", "frames": FrameChunks(uris, bounds)}])[0]["frames"]
    assert isinstance(out, FrameChunks) and out.bounds == bounds and out.num_frames == 25
    assert all("/frames.1/" in u for u in out.uris)  # written beside the input, which a retry still finds
    for (first, chunk), (a, b) in zip(out.chunks(), bounds):
        assert first == a and len(chunk) == b - a and corner(chunk).max() == 255
    assert not any(chunk.any() for _, chunk in FrameChunks(uris, bounds).chunks())


def test_one_entry_in_the_list_gives_it_a_strict_job_file_section(watermark):
    module, stages = watermark
    assert [s.name for s in stages] == ["expand", "sample", "decode", "filter", "watermark", "encode", "write"]
    spec_model = job_spec_for(stages)
    spec = spec_model.model_validate({"manifest": "m", "output": "o",
                                      "watermark": {"text": "v2", "resources": {"num_cpus": 0.5}}})
    assert list(spec.stage_options()) == [s.name for s in stages] and spec.stages == tuple(stages)
    assert spec.stage_options()["watermark"].resources.num_cpus == 0.5
    with pytest.raises(ValidationError) as err:
        spec_model.model_validate({"manifest": "m", "output": "o", "watermark": {"txt": "v2"}})
    assert "watermark.txt: unknown key" in format_errors(err.value, "job")


def test_the_row_contract_holds_in_place_and_a_misplaced_stage_is_refused(watermark):
    from stages.common.variant import PLANNED_KEYS

    module, stages = watermark
    spec = job_spec_for(stages).model_validate({"manifest": "m", "output": "o"})
    instances = [cls(getattr(spec, cls.name)) for cls in stages]
    check_chain(instances, PLANNED_KEYS)
    too_early = [instances[1], instances[4], instances[2], *instances[3:4], *instances[5:]]
    with pytest.raises(ContractError, match="stage 'watermark' reads row key 'frames', but only stage 'decode' "
                                           "writes it, and it runs after 'watermark'"):
        check_chain(too_early, PLANNED_KEYS)
    after_encode = [*instances[1:4], instances[5], instances[4], instances[6]]
    with pytest.raises(ContractError, match="stage 'watermark' reads row key 'frames', but stage 'encode' before "
                                            "it consumes it"):
        check_chain(after_encode, PLANNED_KEYS)
