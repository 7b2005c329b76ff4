"""The README's *Adding a stage* example, run as written: its stage file works on rows, and a job-file
model composed with it takes its section, strictly, and folds its pixel settings into params_hash."""
import re
import types
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.spec import STAGES, format_errors, job_spec_for
from stages.filter import FilterStage

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def watermark():
    section = README.read_text().split("## Adding a stage", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    module = types.ModuleType("watermark_example")
    exec(compile(code, "README.md (stages/watermark.py)", "exec"), module.__dict__)
    return module


def test_the_example_stage_burns_its_text_into_accepted_rows_only(watermark):
    stage = watermark.WatermarkStage(watermark.WatermarkOptions(text="draft"))
    stage.setup()
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    rows = [{"status": "accepted", "frames": frames.copy()}, {"status": "rejected", "frames": frames.copy()},
            {"status": "accepted", "frames": None}]
    out = stage(rows)
    assert out[0]["frames"].any() and not out[1]["frames"].any()
    assert out[2]["status"] == "failed" and out[2]["error"].startswith("watermark: TypeError")
    assert not stage.holds_model and stage.options.pixel_settings() == {"watermark": "draft"}


def test_one_entry_in_the_list_gives_it_a_strict_job_file_section(watermark):
    at = STAGES.index(FilterStage) + 1
    spec_model = job_spec_for(STAGES[:at] + [watermark.WatermarkStage] + STAGES[at:])
    spec = spec_model.model_validate({"manifest": "m", "output": "o",
                                      "watermark": {"text": "v2", "resources": {"num_cpus": 0.5}}})
    assert list(spec.stage_options())[at] == "watermark"
    assert spec.stage_options()["watermark"].resources.num_cpus == 0.5
    with pytest.raises(ValidationError) as err:
        spec_model.model_validate({"manifest": "m", "output": "o", "watermark": {"txt": "v2"}})
    assert "watermark.txt: unknown key" in format_errors(err.value, "job")
