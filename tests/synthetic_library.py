"""A large synthetic library for the report: its test (tests/pipeline/test_report.py) and its benchmark
(bench/report.py) page through the same records."""
from __future__ import annotations

import pyarrow as pa

from pipeline.commit import MetadataWriter, record_schema


def synthetic_library(out: str, run: str, n: int, preview_root: str | None = None) -> None:
    """n records in parts of 20,000 under `out`, committed as run `run` would (half accepted, half rejected,
    three aspect ratios, two seeds, an extra column); previews under `preview_root` when given (no files)."""
    writer = MetadataWriter(out, run, record_schema(pa.schema([("campaign", pa.string())])))
    for first in range(0, n, 20_000):
        writer.commit([{"id": f"v-{i:06d}", "variant": 0, "row": i, "status": ["accepted", "rejected"][i % 2],
                        "prompt": f"a slow pan over a harbour at dawn, shot {i}", "style": ["anime", None][i % 2],
                        "expanded_prompt": f"a slow pan over a harbour at dawn, shot {i}, wide shot, soft light",
                        "tags": [["sim"], ["ad", "night"]][i % 2], "metrics": {"motion": i % 97 / 10},
                        "aspect_ratio": ["16:9", "9:16", "1:1"][i % 3], "seed_index": i // 3 % 2,
                        "reasons": ["frozen: motion 0.1 < 0.2"] if i % 2 else [],
                        **({"preview_uri": f"{preview_root}/v-{i:06d}/0.webp"} if preview_root else {}),
                        "extra": {"campaign": f"c{i % 7}"}} for i in range(first, min(n, first + 20_000))])
    writer.save_text(f"runs/{run}/job.yaml", f"name: {run}\n")
