"""`rushes plan` on the published configs (config-only folders in tests/checkpoints: no weights anywhere): what
each model stage needs on a GPU, whether it fits, what would make it fit, and the job's GPU-hours."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
FAMILY = {"wan2.1-t2v-1.3b": "wan", "wan2.1-t2v-14b": "wan", "wan2.2-t2v-a14b": "wan", "wan2.2-ti2v-5b": "wan",
          "ltx-video": "ltx", "cogvideox-5b": "cogvideox", "cogvideox1.5-5b": "cogvideox", "hunyuanvideo": "hunyuan",
          "skyreels-v2-df-1.3b-540p": "skyreels_df", "skyreels-v2-df-14b-540p": "skyreels_df"}


def job(tmp_path, name: str, extra: str = "", rows: int = 3) -> str:
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "prompt": ["a harbour at dawn"] * rows}),
                   tmp_path / "m.parquet")
    (tmp_path / "job.yaml").write_text(f"manifest: {tmp_path / 'm.parquet'}\noutput: {tmp_path / 'out'}\n"
                                       f"model: {{family: {FAMILY[name]}, path: {CHECKPOINTS / name}}}\n{extra}")
    return str(tmp_path / "job.yaml")


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_every_published_config_gets_a_plan(name, tmp_path, capsys):
    code = main(["plan", job(tmp_path, name), "--gpu", "h200-141gb", "--gpus", "8"])
    out = capsys.readouterr().out
    assert code == 0, out  # every one of these fits a 141 GB GPU in bfloat16
    assert f"plan: model {FAMILY[name]} {CHECKPOINTS / name} (bfloat16) on h200-141gb" in out
    assert "sample   needs" in out and "decode   needs" in out and "GPU-hours at MFU 35%" in out
    assert "3 variants to make" in out


def test_a_model_that_cannot_fit_is_refused_with_the_numbers_and_the_settings_that_would_fit(tmp_path, capsys):
    path = job(tmp_path, "wan2.1-t2v-14b")
    (tmp_path / "job.yaml").write_text((tmp_path / "job.yaml").read_text().replace(
        f"path: {CHECKPOINTS / 'wan2.1-t2v-14b'}", f"path: {CHECKPOINTS / 'wan2.1-t2v-14b'}, dtype: float32"))
    code = main(["plan", path, "--gpu", "a100-40gb"])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "sample   needs" in out and "does NOT fit" in out and "GiB" in out
    assert "it fits with" in out or "nothing makes it fit" in out


def test_gpu_hours_scale_with_the_rows_and_wall_time_with_the_gpus(tmp_path, capsys):
    main(["plan", job(tmp_path, "wan2.1-t2v-1.3b", rows=2), "--gpu", "h100-80gb", "--gpus", "1"])
    two = capsys.readouterr().out
    main(["plan", job(tmp_path, "wan2.1-t2v-1.3b", rows=4), "--gpu", "h100-80gb", "--gpus", "2"])
    four = capsys.readouterr().out

    def hours(text):
        line = next(x for x in text.splitlines() if "GPU-hours at MFU" in x)
        return float(line.split()[0]), float(line.split("; ")[1].split()[0])

    (h2, wall2), (h4, wall4) = hours(two), hours(four)
    assert h4 == pytest.approx(2 * h2, rel=1e-3) and wall4 == pytest.approx(wall2, rel=1e-3)


def test_invalid_rows_are_counted_and_the_first_one_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(FAMILY, "wan2.1-i2v-14b-480p", "wan")  # image-to-video: these text rows lack the image
    code = main(["plan", job(tmp_path, "wan2.1-i2v-14b-480p", rows=3), "--gpu", "h100-80gb"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 variants to make" in out
    assert "3 invalid row(s), not planned; the first: row 'r0': image:" in out and "needs a first image" in out
