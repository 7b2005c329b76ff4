"""Writes the manifests of the ready-made jobs for the four uses: training simulations, an ad campaign, and
virtual-event backdrops (the film storyboard has its own, see film_storyboard.yaml).

    python manifests/make_use_cases.py
"""
from itertools import product
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent

# Training simulations: every scenario under every weather at every time of day, one row each. The columns
# scenario, weather and time_of_day are carried to the records, so a clip library can be sliced by them.
SCENARIOS = {
    "warehouse-robot": "an autonomous forklift carries a pallet down a warehouse aisle past shelving",
    "crossing": "pedestrians and cyclists cross a four-way intersection as cars wait at the lights",
}
WEATHER = {"clear": "clear weather", "rain": "in heavy rain with wet reflective ground"}
TIME_OF_DAY = {"day": "at midday", "night": "at night under street lamps"}


def training_sim() -> pa.Table:
    rows = [{"id": f"{s}-{w}-{t}", "prompt": f"{SCENARIOS[s]}, {WEATHER[w]}, {TIME_OF_DAY[t]}",
             "scenario": s, "weather": w, "time_of_day": t, "tags": ["simulation", s, w, t]}
            for s, w, t in product(SCENARIOS, WEATHER, TIME_OF_DAY)]
    return pa.Table.from_pylist(rows)


# An ad campaign: one row per product; the job's variant matrix makes styles x aspect ratios x seeds of each.
PRODUCTS = [
    {"id": "trail-sneaker", "prompt": "a trail running sneaker splashes through a shallow mountain stream",
     "campaign": "spring-2027", "product": "sneaker", "tags": ["footwear"]},
    {"id": "cold-brew", "prompt": "a can of cold brew coffee beaded with condensation on a cafe counter",
     "campaign": "spring-2027", "product": "coffee", "tags": ["beverage"]},
]

# Virtual events: backdrops for stages and venues, wide, with little foreground action so that a presenter
# can stand in front of them.
BACKDROPS = [
    {"id": "keynote-stage", "prompt": "a wide keynote stage with a curved LED wall showing slow abstract waves "
                                      "of blue light, empty stage, no people", "venue": "conference"},
    {"id": "festival-dusk", "prompt": "an open-air festival stage at dusk with light beams sweeping over the "
                                      "crowd area, no performers", "venue": "festival"},
    {"id": "gala-ballroom", "prompt": "an elegant ballroom with chandeliers, round tables and soft warm "
                                      "light, slow camera drift", "venue": "gala"},
    {"id": "expo-hall", "prompt": "a modern exhibition hall with glowing booths and hanging banners, "
                                  "seen from a balcony", "venue": "expo"},
]

if __name__ == "__main__":
    for name, table in [("training_sim", training_sim()), ("ad_campaign", pa.Table.from_pylist(PRODUCTS)),
                        ("virtual_event", pa.Table.from_pylist([{**b, "tags": ["backdrop", b["venue"]]}
                                                                for b in BACKDROPS]))]:
        pq.write_table(table, HERE / f"{name}.parquet")
        print(f"wrote {HERE / name}.parquet ({table.num_rows} rows)")
