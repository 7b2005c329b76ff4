"""Writes the manifest of the film-storyboard job: one scene, three characters, four shots.

A storyboard row's `prompt` is its cast and setting, the words that open every shot's prompt so that each
character is described the same way in every shot; `shots` is a Parquet list of {prompt, duration_s} structs,
made in order, each continuing from the tail of the one before (stages/long_video/windows.py).

    python manifests/make_film_storyboard.py
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
SHOTS = pa.list_(pa.struct([("prompt", pa.string()), ("duration_s", pa.float64())]))

CAST = ("A harbour town at dusk. Mara, a tall woman in a long red coat with short black hair; Tom, a ten-year-old "
        "boy in a blue cap and yellow raincoat; Ade, an old fisherman with a white beard and a green wool sweater")
STORYBOARD = [
    {"prompt": "wide shot: Mara walks along the harbour wall toward the boats", "duration_s": 2.0},
    {"prompt": "Tom runs down the jetty and waves to Mara", "duration_s": 1.5},
    {"prompt": "Ade looks up from mending a net on his boat and smiles at them", "duration_s": 1.5},
    {"prompt": "close-up: Mara, Tom and Ade laugh together as the harbour lights come on", "duration_s": 2.0},
]


def film_storyboard() -> pa.Table:
    rows = [{"id": "harbour-scene-01", "prompt": CAST, "shots": STORYBOARD, "seed": 11, "project": "harbour",
             "tags": ["storyboard", "previs"]}]
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("shots", SHOTS), ("seed", pa.int64()),
                        ("project", pa.string()), ("tags", pa.list_(pa.string()))])
    return pa.Table.from_pylist(rows, schema=schema)


if __name__ == "__main__":
    pq.write_table(film_storyboard(), HERE / "film_storyboard.parquet")
