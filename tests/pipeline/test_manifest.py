import pyarrow as pa
import pytest

from pipeline.manifest import Manifest, ManifestError, RowValidator, duplicate_ids
from pipeline.spec import load_job


def validate(path):
    """Every row of a small manifest through the planner's own checks, in one batch."""
    manifest = Manifest(path)
    table = pa.concat_tables(manifest.batches())
    validator = RowValidator(load_job({"manifest": path, "output": "o"}), manifest.columns,
                             duplicate_ids(iter([table.column("id").to_pylist()])))
    out = validator.validate(table, 0)
    out.extra_schema = manifest.extra_schema
    return out


def ids(path):
    return [i for t in Manifest(path).batches(["id"]) for i in t.column("id").to_pylist()]


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
        Manifest(make_manifest([{"id": "a", "text": "p"}]))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is not parquet")
    with pytest.raises(ManifestError, match="not readable as Parquet"):
        Manifest(str(junk))
    with pytest.raises(ManifestError, match="not found"):
        Manifest(str(tmp_path / "missing.parquet"))
    with pytest.raises(ManifestError, match="column 'seed' has type string, expected int"):
        Manifest(make_manifest([{"id": "a", "prompt": "p", "seed": "seven"}], name="s.parquet"))


def test_folder_and_glob(tmp_path, make_manifest):
    (tmp_path / "m").mkdir()
    make_manifest([{"id": "a", "prompt": "p"}], name="m/part-0.parquet")
    make_manifest([{"id": "b", "prompt": "q"}], name="m/part-1.parquet")
    assert ids(str(tmp_path / "m")) == ["a", "b"]
    assert ids(str(tmp_path / "m" / "*-1.parquet")) == ["b"]


def test_trailing_newline_in_an_id_is_refused(make_manifest):
    v = validate(make_manifest([{"id": "a\n", "prompt": "p"}, {"id": "b", "prompt": "p"}]))
    assert [r["id"] for r in v.valid] == ["b"]
    assert "id: 'a\\n' must match" in v.invalid[0]["error"]


def test_duplicate_ids_across_batches_name_the_first_row():
    from pipeline.manifest import duplicate_ids

    chunks = [["a", "b", None, "a"], ["bad/id", "c", "b"], ["a", "bad/id"]]
    assert duplicate_ids(iter(chunks)) == {3: 0, 6: 1, 7: 0}  # 'bad/id' is not an id: no duplicate of it


def test_streamed_batches_across_files_equal_the_whole_manifest(tmp_path, make_manifest):
    from pipeline.manifest import Manifest, RowValidator, duplicate_ids

    (tmp_path / "m").mkdir()
    make_manifest([{"id": f"a{i}", "prompt": f"p{i}", "campaign": "x"} for i in range(7)], name="m/part-0.parquet")
    make_manifest([{"id": f"b{i}", "prompt": f"q{i}", "seed": i} for i in range(5)] + [{"id": "a3", "prompt": "again"}],
                  name="m/part-1.parquet")
    m = Manifest(str(tmp_path / "m"))
    assert m.num_rows == 13 and m.columns == ["id", "prompt", "campaign", "seed"]
    batches = list(m.batches(batch_size=3))
    assert [t.num_rows for t in batches] == [3, 3, 1, 3, 3]  # never across a file
    whole = pa.concat_tables(batches)
    assert whole.column("id").to_pylist() == [f"a{i}" for i in range(7)] + [f"b{i}" for i in range(5)] + ["a3"]
    assert whole.column("campaign").to_pylist() == ["x"] * 7 + [None] * 6  # missing in part-1: nulls there
    spec = load_job({"manifest": str(tmp_path / "m"), "output": "o"})
    dups = duplicate_ids(t.column("id").to_pylist() for t in m.batches(["id"], batch_size=2))
    validator = RowValidator(spec, m.columns, dups)
    rows, start = [], 0
    for t in m.batches(batch_size=3):
        rows.append(validator.validate(t, start))
        start += t.num_rows
    invalid = [r for v in rows for r in v.invalid]
    assert [(r["row"], r["error"]) for r in invalid] == [(12, "id: 'a3' duplicates row 3")]
    assert [r["row"] for v in rows for r in v.valid] == list(range(12))


def test_files_that_disagree_are_named(tmp_path, make_manifest):
    from pipeline.manifest import Manifest

    (tmp_path / "m").mkdir()
    make_manifest([{"id": "a", "prompt": "p"}], name="m/part-0.parquet")
    make_manifest([{"id": "b", "text": "no prompt"}], name="m/part-1.parquet")
    with pytest.raises(ManifestError, match=r"missing required column 'prompt' in .*part-1.parquet"):
        Manifest(str(tmp_path / "m"))
    make_manifest([{"id": "b", "prompt": "q", "campaign": 3}], name="m/part-1.parquet")
    make_manifest([{"id": "c", "prompt": "r", "campaign": [1.5]}], name="m/part-2.parquet")
    with pytest.raises(ManifestError, match="disagree on a column's type"):
        Manifest(str(tmp_path / "m"))
