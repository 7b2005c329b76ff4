"""GPU-busy figures from spans (pipeline/gpu_time.py), and the order work starts in (pipeline/plan.py): no Ray."""
from __future__ import annotations

import pytest

from pipeline.gpu_time import gpu_time
from pipeline.plan import PlanSpill, read_plan_object, sampling_cost
from pipeline.rows import rows_of
from stages.models.families import NullFamily, WanFamily


def span(stage, start, end, worker, gpus=1.0):
    return {"stage": stage, "start": float(start), "end": float(end), "worker": worker, "gpus": gpus}


def test_busy_steady_ramp_tail_and_ideal_from_spans():
    # two GPUs: gpu0 samples 0-10 and decodes 10-12; gpu1 starts at 2, samples 2-6, idle 6-8, samples 8-9
    spans = [span("sample", 0, 10, "n/gpu0"), span("decode", 10, 12, "n/gpu0"),
             span("sample", 2, 6, "n/gpu1"), span("sample", 8, 9, "n/gpu1")]
    t = gpu_time(spans + spans[:1], started=-3.0, gpus=2)  # a batch's span on each of its rows counts once
    assert t.on_gpus and t.devices == 2 and t.makespan_s == 12
    assert t.busy == {"n/gpu0": 12, "n/gpu1": 5} and t.ideal_s == pytest.approx(8.5)
    assert t.busy_fraction == pytest.approx(8.5 / 12)
    assert t.ramp_s == 2 and t.tail_s == 3  # every GPU busy from 2; gpu1 done for good at 9
    assert t.steady_s == 7 and t.steady_fraction == pytest.approx((7 + 5) / 14)
    assert t.stages["sample"] == {"workers": 2, "gpus": 1.0, "busy_s": 15.0, "idle_s": pytest.approx(3 + 10)}
    assert t.stages["decode"]["busy_s"] == 2 and t.stages["decode"]["idle_s"] == pytest.approx(3)
    assert any(line.startswith("2 GPUs; GPU phase 12.0 s") for line in t.lines())


def test_a_gpu_that_ran_nothing_is_idle_throughout_and_cpu_runs_use_their_actors():
    t = gpu_time([span("sample", 0, 10, "n/gpu0")], gpus=4)
    assert t.devices == 4 and t.busy_fraction == pytest.approx(0.25) and t.steady_fraction is None
    cpu = gpu_time([span("sample", 0, 4, "n/pid1", 0.0), span("decode", 4, 5, "n/pid2", 0.0)])
    assert not cpu.on_gpus and cpu.devices == 2 and cpu.ideal_s == pytest.approx(2.5)
    assert gpu_time([]).devices == 0


def test_the_dearest_variants_start_first_and_equal_ones_keep_their_order(tmp_path):
    def row(i, frames, long=False):
        return {"id": f"v{i}", "variant": 0, "height": 64, "width": 64, "num_frames": frames, "fps": 8,
                "num_inference_steps": 4, "guidance_scale": 5.0, "base_num_frames": 17 if long else None,
                "overlap_history": 9 if long else None, "shots": None}

    rows = [row(0, 9), row(1, 17 + 8 * 20, long=True), row(2, 9), row(3, 17 + 8 * 5, long=True), row(4, 9)]
    spill = PlanSpill(str(tmp_path / "lib"), "run", 0, rows_per_object=2,
                      cost=lambda v: sampling_cost(v, NullFamily))
    spill.add(rows)
    order = [r["id"] for u in spill.close() for r in rows_of(read_plan_object(u))]
    assert order == ["v1", "v3", "v0", "v2", "v4"]
    plain = PlanSpill(str(tmp_path / "lib2"), "run", 0, rows_per_object=2)
    plain.add(rows)
    assert [r["id"] for u in plain.close() for r in rows_of(read_plan_object(u))] == [f"v{i}" for i in range(5)]
    # a window costs its tokens x steps x passes: a family that cannot extend counts one window
    assert sampling_cost(row(1, 81), WanFamily) == 21 * 8 * 8 * 4 * 2
    assert sampling_cost(rows[1], NullFamily) == (5 + 20 * 5) * 8 * 8 * 4 * 2
