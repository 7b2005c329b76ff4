"""Writes manifests/demo.parquet: varied prompts, a few per-row overrides, and two invalid rows.

    python manifests/make_demo.py
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [
    {"id": "beach-cat", "prompt": "a cat walking along a beach at sunset"},
    {"id": "city-night", "prompt": "a red car drives through a rainy city street at night", "seed": 7},
    {"id": "forest-deer", "prompt": "a deer crosses a misty forest clearing at dawn", "num_variants": 2},
    {"id": "drone-canyon", "prompt": "aerial drone shot over a desert canyon", "style": "documentary"},
    {"id": "kitchen-chef", "prompt": "a chef flips vegetables in a busy kitchen",
     "negative_prompt": "blurry, low quality"},
    {"id": "sneaker-ad", "prompt": "a white sneaker spins on a pedestal in a studio",
     "style": "commercial product", "tags": ["ad", "footwear"]},
    {"id": "warehouse-robot", "prompt": "a robot arm moves boxes onto a conveyor in a warehouse",
     "tags": ["simulation"], "num_frames": 25},
    {"id": "ocean-whale", "prompt": "a whale breaches in a calm ocean under a cloudy sky", "fps": 12},
    {"id": "square-coffee", "prompt": "steam rising from a coffee cup on a wooden table",
     "height": 128, "width": 128},
    {"id": "crosswalk", "prompt": "pedestrians cross a busy intersection in light snow",
     "num_inference_steps": 6, "guidance_scale": 4.0},
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
