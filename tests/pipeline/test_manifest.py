import pyarrow as pa
import pytest

from pipeline.manifest import ManifestError, read_manifest, validate_rows
from pipeline.spec import load_job


def validate(path):
    return validate_rows(read_manifest(path), load_job({"manifest": path, "output": "o"}))


def test_valid_rows_get_defaults_and_overrides(make_manifest):
    path = make_manifest([{"id": "a", "prompt": "a cat", "seed": 3, "campaign": "x"},
                          {"id": "b", "prompt": "a dog", "height": 128, "campaign": "y"}])
    v = validate(path)
    assert v.invalid == []
    a, b = v.valid
    assert (a["seed"], a["height"], a["width"]) == (3, 96, 160)
    assert b["height"] == 128 and isinstance(b["seed"], int)
    assert a["extra"] == {"campaign": "x"} and v.extra_schema.names == ["campaign"]


def test_derived_seed_is_stable_for_the_id(make_manifest, tmp_path):
    one = validate(make_manifest([{"id": "a", "prompt": "p"}], name="one.parquet")).valid[0]["seed"]
    two = validate(make_manifest([{"id": "z", "prompt": "q"}, {"id": "a", "prompt": "p"}],
                                 name="two.parquet")).valid[1]["seed"]
    assert one == two


def test_each_bad_row_is_invalid_with_column_and_problem(make_manifest):
    rows = [
        {"id": "ok", "prompt": "fine"},
        {"id": "bad/id", "prompt": "p"},
        {"id": "ok", "prompt": "duplicate"},
        {"id": "empty", "prompt": "  "},
        {"id": None, "prompt": "p"},
        {"id": "neg", "prompt": "p", "seed": -1},
        {"id": "h", "prompt": "p", "height": 100},
        {"id": "f", "prompt": "p", "num_frames": 16},
        {"id": "frac", "prompt": "p", "fps": 7.5},
        {"id": "..", "prompt": "p"},
    ]
    v = validate(make_manifest(rows, types={"fps": pa.float64()}))
    assert [r["id"] for r in v.valid] == ["ok"]
    errors = {r["row"]: r["error"] for r in v.invalid}
    assert "id: 'bad/id' must match" in errors[1]
    assert errors[2] == "id: 'ok' duplicates row 0"
    assert errors[3] == "prompt: empty"
    assert errors[4] == "id: missing"
    assert errors[5] == "seed: must be between 0 and 2147483647, got -1"
    assert errors[6] == "height must be a multiple of 16 for family 'wan', got 100"
    assert errors[7].startswith("num_frames must be 4*k+1")
    assert errors[8] == "fps: must be a whole number, got 7.5"
    assert "id: '..' must match" in errors[9]


def test_not_a_manifest_is_refused(make_manifest, tmp_path):
    with pytest.raises(ManifestError, match="missing required column 'prompt'"):
        read_manifest(make_manifest([{"id": "a", "text": "p"}]))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is not parquet")
    with pytest.raises(ManifestError, match="not readable as Parquet"):
        read_manifest(str(junk))
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(str(tmp_path / "missing.parquet"))
    with pytest.raises(ManifestError, match="column 'seed' has type string, expected int"):
        read_manifest(make_manifest([{"id": "a", "prompt": "p", "seed": "seven"}], name="s.parquet"))


def test_folder_and_glob(tmp_path, make_manifest):
    (tmp_path / "m").mkdir()
    make_manifest([{"id": "a", "prompt": "p"}], name="m/part-0.parquet")
    make_manifest([{"id": "b", "prompt": "q"}], name="m/part-1.parquet")
    assert read_manifest(str(tmp_path / "m")).column("id").to_pylist() == ["a", "b"]
    assert read_manifest(str(tmp_path / "m" / "*-1.parquet")).column("id").to_pylist() == ["b"]
