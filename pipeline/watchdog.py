"""A run never hangs: the driver's watchdog over a Ray Data dataset, and its diagnosis.

In: the dataset's batches as the driver consumes them, and the stages' signs of life from the ledger
actor (pipeline/graph.py: a batch begun or ended, a heartbeat every few seconds while a batch or a
model load runs). Out: the batches, in order; or, when neither the driver nor any stage has seen
progress for `ray.stall_timeout_s`, a `Stalled` error whose message says which operators wait and for
what: actors that cannot be placed, the resources pending work asks for, what the cluster has free,
and the nodes that were lost.

A slow model never trips it: a stage that is working sends heartbeats. What trips it is work that
cannot start: actors or tasks that no node can take (a starved cluster, a lost GPU node that is never
replaced), or workers that died and cannot be restarted. A batch that hangs inside a live worker keeps
its heartbeats going; `ray.batch_timeout_s` is for that (pipeline/graph.py, GuardedStage).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import ray

POLL_S = 1.0


class Stalled(RuntimeError):
    """No progress for `ray.stall_timeout_s`; the message is the diagnosis."""


def watched_batches(ds, ledger, timeout_s: float, on_idle=None) -> Iterator:
    """`ds.iter_batches()` (pyarrow), raising `Stalled` when nothing moves for `timeout_s`. `on_idle()` is
    called about every POLL_S seconds while waiting (the driver flushes its commit buffer there)."""
    items: queue.Queue = queue.Queue(maxsize=2)
    stopped = threading.Event()
    # Ray Data keeps the executor to itself until the first block arrives; catch it as it is made, so that
    # a stalled dataset can be shut down (else its threads go on calling a Ray that may be shut down).
    executors = []
    make_executor = ds._create_executor
    ds._create_executor = lambda: executors.append(make_executor()) or executors[-1]

    def pump():
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if stopped.is_set():
                    return
                items.put(("batch", batch))
            items.put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the driver's thread, raised there
            if not stopped.is_set():
                items.put(("error", e))

    threading.Thread(target=pump, name="rushes-dataset", daemon=True).start()
    last = time.time()
    while True:
        try:
            kind, item = items.get(timeout=POLL_S)
        except queue.Empty:
            if on_idle:
                on_idle()
            if time.time() - last < timeout_s:
                continue
            seen = ray.get(ledger.activity.remote(), timeout=30)
            last = max([last, *seen.values()])
            if time.time() - last < timeout_s:
                continue
            message = diagnose(timeout_s, seen)
            stopped.set()
            for executor in executors:
                executor.shutdown(force=True)
            raise Stalled(message) from None
        if kind == "end":
            return
        if kind == "error":
            raise item
        last = time.time()
        yield item


def _resources(d: dict) -> str:
    return ", ".join(f"{k} {v / 2**30:g} GiB" if k == "memory" else f"{k} {v:g}"
                     for k, v in sorted(d.items()) if v and not k.startswith("node:"))


def diagnose(timeout_s: float, seen: dict[str, float]) -> str:
    """What the run waits for, from Ray's own state (works without the dashboard)."""
    from ray._private.state import actors

    now = time.time()
    lines = [f"the run stalled: no record committed and no stage made progress for {timeout_s:g} s "
             "(ray.stall_timeout_s)."]
    if seen:
        lines.append("  last sign of life per stage: " + ", ".join(
            f"{stage} {now - t:.0f} s ago" for stage, t in sorted(seen.items(), key=lambda x: -x[1])))
    else:
        lines.append("  no stage ever started a batch")
    waiting = {}
    for a in actors().values():
        if a.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"):
            name = a.get("ActorClassName") or "?"
            waiting[name] = waiting.get(name, 0) + 1
    if waiting:
        lines.append("  actors waiting to be placed: " + ", ".join(f"{n} x{c}" for n, c in sorted(waiting.items())))
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        asks = [f"{{{_resources(b.bundle)}}} x{b.count}" for d in status.resource_demands.ray_task_actor_demand
                for b in d.bundles_by_count]
        if asks:
            lines.append("  pending work asks for: " + "; ".join(asks))
    except Exception:  # noqa: BLE001 - the diagnosis goes on without it
        pass
    total, free = ray.cluster_resources(), ray.available_resources()
    lines.append("  the cluster has free: " + ", ".join(
        f"{k} {free.get(k, 0):g} of {total.get(k, 0):g}" for k in ("CPU", "GPU") if total.get(k) or k == "CPU"))
    lost = [n for n in ray.nodes() if not n["Alive"]]
    for n in lost:
        lines.append(f"  node {n.get('NodeManagerAddress')} ({_resources(n.get('Resources') or {})}) was lost "
                     "and has not come back")
    return "\n".join(lines)
