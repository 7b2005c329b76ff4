"""Writes manifests/demo.parquet: toy-world prompts, a few per-row overrides, one prompt outside the world, and
two invalid rows.

    python manifests/make_demo.py
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Prompts of builtin:toy-shapes' world (training/toy_world/world.py): a person checks each video against its prompt.
ROWS = [
    {"id": "red-circle-left", "prompt": "a red circle moves left on a black background"},
    {"id": "blue-square-up", "prompt": "a blue square moves up on a gray background", "seed": 7},
    {"id": "yellow-triangle-right", "prompt": "a yellow triangle moves right on a black background",
     "num_variants": 2},
    {"id": "green-and-white", "prompt": "a green circle moves down and a white square stays still on a gray background",
     "tags": ["two objects"]},
    {"id": "white-triangle-still", "prompt": "a white triangle stays still on a black background"},
    {"id": "red-and-blue", "prompt": "a red square moves right and a blue triangle moves left on a black background",
     "tags": ["two objects"]},
    {"id": "green-square-left", "prompt": "a green square moves left on a gray background", "fps": 12},
    {"id": "yellow-circle-up", "prompt": "a yellow circle moves up on a black background",
     "negative_prompt": "a red circle"},
    {"id": "blue-circle-down", "prompt": "a blue circle moving down on a gray background"},
    # Outside the toy world on purpose: the model draws something of its world, and the toy CLIP's score
    # (filter.min_clip_score) rejects it.
    {"id": "dragon", "prompt": "a purple dragon flies over a castle at sunset"},
    # Invalid on purpose: a slash in the id (ids become storage keys), and an empty prompt.
    {"id": "bad/id", "prompt": "this row's id would escape its folder"},
    {"id": "empty-prompt", "prompt": "   "},
]

COLUMNS = {
    "id": pa.string(), "prompt": pa.string(), "negative_prompt": pa.string(), "seed": pa.int64(),
    "num_variants": pa.int64(), "height": pa.int64(), "width": pa.int64(), "num_frames": pa.int64(),
    "fps": pa.int64(), "num_inference_steps": pa.int64(), "guidance_scale": pa.float64(),
    "style": pa.string(), "tags": pa.list_(pa.string()),
}

if __name__ == "__main__":
    table = pa.table({c: pa.array([r.get(c) for r in ROWS], t) for c, t in COLUMNS.items()})
    # An extra column: carried through to every record untouched.
    table = table.append_column("campaign", pa.array(["demo"] * len(ROWS)))
    out = Path(__file__).with_name("demo.parquet")
    pq.write_table(table, out)
    print(f"wrote {out} ({table.num_rows} rows)")
