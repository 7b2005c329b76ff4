"""Libraries written before a change keep their params_hash: the planned hashes of one job per family (and of an
LLM rewriter, a variant matrix, a cache hook, a storyboard) equal those that commit e2d690c computed, stored in
tests/data/params_hash_e2d690c.json. A changed hash would regenerate every video of an existing library."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.plan import Planner
from pipeline.spec import load_job

STORED = json.loads((Path(__file__).resolve().parents[1] / "data" / "params_hash_e2d690c.json").read_text())

CASES = {
  "tiny-wan": {"model": {"family": "wan", "path": "builtin:tiny-wan"}},
  "tiny-wan22": {"model": {"family": "wan", "path": "builtin:tiny-wan22"}},
  "tiny-wan22-ti2v": {"model": {"family": "wan", "path": "builtin:tiny-wan22-ti2v"}, "sampling": {"height": 64, "width": 64}},
  "tiny-ltx": {"model": {"family": "ltx", "path": "builtin:tiny-ltx"}, "sampling": {"num_frames": 9}},
  "tiny-cogvideox": {"model": {"family": "cogvideox", "path": "builtin:tiny-cogvideox"}},
  "tiny-hunyuan": {"model": {"family": "hunyuan", "path": "builtin:tiny-hunyuan"}, "sampling": {"true_cfg_scale": 3.0}},
  "tiny-skyreels": {"model": {"family": "skyreels", "path": "builtin:tiny-skyreels"}},
  "tiny-skyreels-df": {"model": {"family": "skyreels_df", "path": "builtin:tiny-skyreels-df"}, "sampling": {"num_frames": 33}},
  "null": {"model": {"family": "null", "path": "builtin:null"}},
  "tiny-wan+llm": {"model": {"family": "wan"}, "expand": {"mode": "llm", "backend": "local", "model": "builtin:tiny-qwen"}},
  "tiny-wan+matrix+cache": {"model": {"family": "wan"}, "variants": {"styles": ["noir", "anime"], "aspect_ratios": ["16:9", "1:1"]},
                            "sample": {"cache": {"kind": "first_block", "threshold": 0.05}}, "encode": {"codec": "vp9"}},
}
ROWS = [{"id": "a", "prompt": "a red fox runs through snow", "seed": 3},
        {"id": "b", "prompt": "a harbour at dawn", "negative_prompt": "blurry"}]


@pytest.mark.parametrize("name", sorted(CASES))
def test_planned_params_hash_equals_the_stored_one(name, tmp_path):
    rows = [dict(r) for r in ROWS]
    if name == "tiny-skyreels-df":
        rows.append({"id": "story", "prompt": "Ada, a sailor", "shots": [{"prompt": "Ada mends a net", "duration_s": 1.0},
                                                                           {"prompt": "Ada rows out", "duration_s": 2.0}]})
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    spec = load_job({"manifest": str(manifest), "output": str(tmp_path / "out"), "run_id": "r", **CASES[name]})
    planned = {f"{v['id']}/{v['variant']}": v["params_hash"] for b in Planner(spec).batches() for v in b.todo}
    assert planned == STORED[name]
