"""The one place where stages become Ray Data operators, with their resources, retries and failure bounds.

In: the plan objects of the variants to generate (pipeline/plan.py), the JobSpec and the run context.
Out: a Ray Data `Dataset` of metadata records. The graph is a read of the plan objects (tasks), then one
operator per stage of `pipeline.spec.STAGES`, in order, made from what the stage declares: a stage that
holds a model becomes an actor pool (its `setup()` once per actor), any other becomes tasks; each with
its own CPUs, GPUs, memory, batch size and replicas (fixed, or a `min..max` range that Ray Data scales).
Expansion runs before this, in the driver, while planning (pipeline/plan.py).

Failures, and what bounds them:
- A worker process that dies (a crash, a lost node) is restarted by Ray and its batch retried; Ray Data
  does that without limit. An `AttemptLedger` actor counts, per row and stage, the starts that never
  ended. A batch with a row that already died once is rerun one row at a time, so only the row at fault
  is charged, and a row charged `ray.max_row_attempts` times is recorded `failed` instead of run again.
- A batch that runs past `ray.batch_timeout_s` (when set) ends its worker process from the heartbeat
  thread; it is then charged like a crash, and a failed row's error names the timeout.
- A stage's `setup()` (model load) is tried `ray.setup_attempts` times inside the actor.
- A stage that no node can host fails the job after `ray.resource_wait_s`, naming the resource, instead
  of waiting forever; an autoscaler is asked for one replica's worth meanwhile.

Rows travel between operators in the wire format of pipeline/rows.py, in blocks of one sample batch
each, so that every free sampler can take the next batch.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time

import pyarrow as pa
import ray
import ray.data
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.errors import ClusterError
from pipeline.plan import read_plan_object
from pipeline.rows import rows_of, table_of
from pipeline.spec import STAGES, JobSpec
from stages.base import Resources, RunContext, Stage

log = logging.getLogger("rushes")


HEARTBEAT_S = 10.0  # a working stage tells the ledger it is alive this often (pipeline/watchdog.py)
TIMEOUT_EXIT = 75  # the exit status of a worker that ended itself for ray.batch_timeout_s


@ray.remote(num_cpus=0, max_restarts=0)
class AttemptLedger:
    """Per (stage, row): how often it died with its worker. A batch that dies makes its rows suspects;
    only a death while running alone is charged to the row.

    Also each stage's last sign of life (a batch begun or ended, a heartbeat while a batch or a model load
    runs), which the driver's watchdog reads to tell a slow stage from a stalled run."""

    def __init__(self):
        self.suspects: set[str] = set()
        self.alone: dict[str, int] = {}  # starts alone that never ended
        self.timeouts: dict[str, int] = {}  # of those, the ones its worker ended for running too long
        self.seen: dict[str, float] = {}  # stage -> time.time() of its last sign of life

    def beat(self, stage: str) -> None:
        self.seen[stage] = time.time()

    def saw(self, keys: list[str]) -> None:
        """A batch begun or ended: a sign of life of its stage (keys are '<stage>/<id>/<variant>/<seed>')."""
        if keys:
            self.beat(keys[0].split("/", 1)[0])

    def activity(self) -> dict[str, float]:
        return dict(self.seen)

    def begin(self, keys: list[str], alone: bool) -> tuple[dict[str, int], bool]:
        """Deaths so far per key, and whether the keys were started: a batch holding a suspect is not."""
        self.saw(keys)
        deaths = {k: self.alone.get(k, 0) for k in keys}
        if alone:
            for k in keys:
                self.alone[k] = deaths[k] + 1
            return deaths, True
        if any(k in self.suspects or k in self.alone for k in keys):
            return deaths, False
        self.suspects.update(keys)
        return deaths, True

    def end(self, keys: list[str]) -> None:
        self.saw(keys)
        for k in keys:
            self.suspects.discard(k)
            self.alone.pop(k, None)
            self.timeouts.pop(k, None)

    def timed_out(self, keys: list[str]) -> None:
        """The worker running these keys is about to end itself: they ran past `ray.batch_timeout_s`
        (counted for rows running alone, as deaths are)."""
        for k in keys:
            if k in self.alone:
                self.timeouts[k] = self.timeouts.get(k, 0) + 1

    def timeouts_of(self, keys: list[str]) -> dict[str, int]:
        return {k: self.timeouts.get(k, 0) for k in keys}


class GuardedStage:
    """Runs a stage on a batch, charging each worker death to the row that was running. With a
    `batch_timeout_s`, a batch that runs longer ends its own worker process (a hang inside a live worker
    would otherwise keep sending heartbeats forever); Ray restarts it, and the rows are charged as for a
    crash, with the timeout named in a failed row's error."""

    def __init__(self, stage: Stage, ledger, max_row_attempts: int, batch_timeout_s: float | None = None):
        self.stage, self.ledger, self.max_attempts = stage, ledger, max_row_attempts
        self.batch_timeout_s = batch_timeout_s
        self.running: list[str] = []  # the keys of the batch (or row) the stage is running now
        self.started = 0.0  # and since when (time.monotonic())
        self.ready = False

    def setup(self) -> None:
        with self.alive(limit=False):
            self.stage.setup()
        self.ready = True

    def overdue(self) -> None:
        """Called from the heartbeat thread when the batch has run past `batch_timeout_s`: say so to the
        ledger and end this worker process (the only way to stop a thread stuck in native code)."""
        keys = list(self.running)
        log.error("%s: a batch of %d row(s) (%s) has run for more than %g s (ray.batch_timeout_s); ending this "
                  "worker so that Ray restarts it", self.stage.name, len(keys), ", ".join(keys[:3]),
                  self.batch_timeout_s)
        with contextlib.suppress(Exception):
            ray.get(self.ledger.timed_out.remote(keys), timeout=30)
        os._exit(TIMEOUT_EXIT)

    @contextlib.contextmanager
    def alive(self, limit: bool = True):
        """Heartbeats to the ledger while a batch or a model load runs: a slow stage is not a stalled one.
        With `limit`, the batch timeout is checked on the same thread."""
        done = threading.Event()
        timeout = self.batch_timeout_s if limit else None
        self.started = time.monotonic()

        def beat():
            tick = min(HEARTBEAT_S, max(0.2, timeout / 10)) if timeout else HEARTBEAT_S
            last = time.monotonic()
            while not done.wait(tick):
                now = time.monotonic()
                if timeout and now - self.started > timeout and not done.is_set():
                    self.overdue()
                if now - last >= HEARTBEAT_S - 1e-3 or not timeout:
                    self.ledger.beat.remote(self.stage.name)
                    last = now

        thread = threading.Thread(target=beat, name=f"rushes-{self.stage.name}-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()

    def key(self, r: dict) -> str:
        return f"{self.stage.name}/{r['id']}/{r['variant']}/{r['seed']}"

    def __call__(self, rows: list[dict]) -> list[dict]:
        if not self.ready:  # a task's copy of the stage: set up once per worker process
            self.setup()
        with self.alive():
            return self.run(rows)

    def run(self, rows: list[dict]) -> list[dict]:
        keys = [self.key(r) for r in rows]
        deaths, started = ray.get(self.ledger.begin.remote(keys, False))
        if started:
            self.running = keys
            rows = self.stage(rows)
            self.ledger.end.remote(keys)
            return rows
        # An earlier try of this batch died with its worker: go one row at a time so that only the row at
        # fault is charged again.
        out = []
        timeouts = None
        for r, k in zip(rows, keys):
            if deaths[k] >= self.max_attempts and r["status"] == "pending":
                if timeouts is None:
                    timeouts = ray.get(self.ledger.timeouts_of.remote(keys))
                why = (f"{timeouts[k]} of them past ray.batch_timeout_s={self.batch_timeout_s:g} s, when the "
                       "worker ended itself; ") if timeouts[k] else ""
                r.update(status="failed", error=(
                    f"{self.stage.name}: the worker process died {deaths[k]} times while running this row "
                    f"alone ({why}not tried again, ray.max_row_attempts={self.max_attempts})"))
                r.pop("latents", None)
                r.pop("frames", None)
                out.append(r)
                continue
            ray.get(self.ledger.begin.remote([k], True))
            self.running, self.started = [k], time.monotonic()
            out.extend(self.stage([r]))
            self.ledger.end.remote([k])
        return out


def task_function(name: str):
    """Task operators: a stage without a model, on one batch; named after the stage, so that Ray Data's
    progress lines and the watchdog's diagnosis say MapBatches(filter), not a generic name."""
    def run(batch: pa.Table, guarded: GuardedStage) -> pa.Table:
        return table_of(guarded(rows_of(batch)))

    run.__name__ = run.__qualname__ = name
    return run


def actor_class(name: str) -> type:
    return type(name, (StageActor,), {"__doc__": StageActor.__doc__})


class StageActor:
    """Actor operators: the stage's `setup()` (model loading) runs once per actor, in the actor."""

    def __init__(self, guarded: GuardedStage, setup_attempts: int):
        name = guarded.stage.name
        for attempt in range(1, setup_attempts + 1):
            try:
                guarded.setup()
                break
            except Exception as e:  # noqa: BLE001 - retried, then raised with the count
                if attempt == setup_attempts:
                    raise RuntimeError(f"{name}: setup failed {attempt} times; last error: "
                                       f"{type(e).__name__}: {e}") from e
                log.warning("%s: setup failed (try %d of %d), trying again: %s: %s",
                            name, attempt, setup_attempts, type(e).__name__, e)
                time.sleep(random.uniform(0, min(2.0 ** attempt, 30.0)))
        self.guarded = guarded

    def __call__(self, batch: pa.Table) -> pa.Table:
        return table_of(self.guarded(rows_of(batch)))


def demand(res: Resources) -> dict[str, float]:
    need = {"CPU": res.num_cpus, "GPU": res.num_gpus, "memory": (res.memory_gb or 0) * 2**30}
    return {k: v for k, v in need.items() if v}


def unhostable(stages: dict[str, Resources]) -> list[str]:
    """Why each stage that no alive node can host one replica of cannot be placed."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    problems = []
    for name, res in stages.items():
        need = demand(res)
        if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
            continue
        short = sorted({k for k, v in need.items() for node in nodes if node.get(k, 0) < v}) or sorted(need)
        best = {k: max((node.get(k, 0) for node in nodes), default=0) for k in short}
        fmt = lambda d: ", ".join(f"{k}={v / 2**30:g}GiB" if k == "memory" else f"{k}={v:g}" for k, v in d.items())
        problems.append(f"{name}: no node can host one replica, which needs {fmt(need)}; the most any of the "
                        f"{len(nodes)} alive nodes offers is {fmt(best)} (missing: {', '.join(short)})")
    return problems


def wait_for_resources(stages: dict[str, Resources], wait_s: float) -> None:
    """Fail in bounded time, naming the resource, when no node can host a stage; ask an autoscaler meanwhile."""
    problems = unhostable(stages)
    if not problems:
        return
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[demand(r) for r in stages.values()])
    except Exception:  # noqa: BLE001 - no autoscaler: nothing to ask
        pass
    log.warning("waiting up to %.0f s for nodes: %s", wait_s, "; ".join(problems))
    deadline = time.monotonic() + wait_s
    while problems and time.monotonic() < deadline:
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        problems = unhostable(stages)
    if problems:
        raise ClusterError("the Ray cluster cannot run this job: " + "; ".join(problems) +
                           f" (waited {wait_s:g} s, ray.resource_wait_s). Add such a node, or lower the stage's "
                           "resources in the job file.")


def gpus_crowded(actors: dict[str, Resources]) -> str | None:
    """A warning when the model stages' smallest pools cannot hold their GPUs at the same time: Ray Data
    then starts decoding only when sampling has ended, and every latent of the job waits in the object
    store meanwhile (on a one-GPU machine with 1 GPU asked for each stage, for one)."""
    need = {name: r.num_gpus * r.replica_range[0] for name, r in actors.items() if r.num_gpus}
    have = sum(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"])
    if len(need) < 2 or sum(need.values()) <= have:
        return None
    asks = ", ".join(f"{name} {g:g}" for name, g in need.items())
    return (f"the model stages ask for {sum(need.values()):g} GPUs together ({asks}; num_gpus x the fewest "
            f"replicas) but the cluster has {have:g}: they cannot run at the same time, so decoding waits for "
            f"sampling to finish and holds every latent until then. Give them fractions that fit together "
            f"(e.g. num_gpus: 0.5 each on one GPU) or add GPUs.")


def operator_args(stage: Stage, res: Resources) -> dict:
    """Ray Data's arguments for a stage's operator: an actor pool for a stage that holds a model, else tasks."""
    args = {"num_cpus": res.num_cpus, "batch_size": stage.options.batch_size, "batch_format": "pyarrow"}
    if res.num_gpus:
        args["num_gpus"] = res.num_gpus
    if res.memory_gb:
        args["memory"] = int(res.memory_gb * 2**30)
    if stage.holds_model:
        lo, hi = res.replica_range
        args["compute"] = ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
    return args


PLAN_READ = "read"  # the task operator that reads plan objects, ahead of the stages


def fit_pipeline(stages: list[Stage], asks: dict[str, Resources], cpus: float
                 ) -> tuple[dict[str, Resources], str | None]:
    """The whole pipeline against the cluster's CPUs: every actor pool at its fewest replicas plus one
    task of each task operator (the plan read included) must fit at once, or nothing flows (the actors
    hold every CPU and no task is ever scheduled). Returns the CPU asks to use, and what was changed.

    The plan read keeps one whole CPU (Ray Data's block repartition after it runs as a task of 1 CPU
    that cannot be asked for less). The other task operators share what the actor pools leave, in
    fractions of a CPU; when the actor pools alone fill the rest, they are scaled to three quarters of
    it. (CPUs are scheduling tokens here: a stage's torch threads still follow its own `num_cpus`.)
    GPUs are not adapted: pools that cannot hold their GPUs together still progress, one after the
    other (see `gpus_crowded`)."""
    asks = {PLAN_READ: Resources(num_cpus=1), **asks}
    pools = {s.name for s in stages if s.holds_model}
    count = {name: (res.replica_range[0] if name in pools else 1) for name, res in asks.items()}
    pool_cpu = sum(count[n] * asks[n].num_cpus for n in pools)
    task_cpu = sum(asks[n].num_cpus for n in asks if n not in pools and n != PLAN_READ)
    if 1 + pool_cpu + task_cpu <= cpus + 1e-9:
        return asks, None
    rest = cpus - 1
    if rest <= 0:
        raise ClusterError(f"the Ray cluster has {cpus:g} CPUs: the pipeline needs more than one (one reads "
                           "the plan, the rest run the stages)")
    pool_scale = 1.0 if pool_cpu < rest else 0.75 * rest / pool_cpu
    task_scale = (rest - pool_cpu * pool_scale) / task_cpu if task_cpu else 1.0
    fitted = {n: r if n == PLAN_READ else r.model_copy(update={
              "num_cpus": r.num_cpus * (pool_scale if n in pools else task_scale)}) for n, r in asks.items()}
    ask = ", ".join(f"{n} {count[n] * r.num_cpus:g}" + (f" ({count[n]} replicas)" if count[n] > 1 else "")
                    for n, r in asks.items() if r.num_cpus)
    now = ", ".join(f"{n} {r.num_cpus:.2f}" for n, r in fitted.items() if r.num_cpus)
    return fitted, (f"the stages ask for {1 + pool_cpu + task_cpu:g} CPUs together ({ask}) but the cluster has "
                    f"{cpus:g}; so that every stage can run at once, CPUs per replica are now: {now}")


AUTO_CPU_REPLICAS = (1, 4)  # bounds of an 'auto' pool on a cluster without GPUs


def auto_replicas(res: Resources, cpus: float, gpus: float) -> Resources:
    """`replicas: auto`, resolved against the cluster when the run starts.

    - A stage that asks for GPUs: a pool that Ray Data scales from 1 up to as many replicas as the
      cluster's GPUs hold, so it grows when its input queues up and the GPUs are free.
    - On CPUs alone: a fixed pool of one replica per two logical CPUs (1 to 4). A model stage on CPU
      runs each replica with `num_cpus` threads; for the small convolutions of a VAE, two one-thread
      replicas do more than one two-thread replica, and a fixed pool starts them all at once, where an
      autoscaling one would add them only after its queue had built up (bench/RESULTS.md, vs_loop)."""
    if res.replicas != "auto":
        return res
    if res.num_gpus:
        return res.model_copy(update={"replicas": f"1..{max(1, int(gpus // res.num_gpus))}"})
    lo, hi = AUTO_CPU_REPLICAS
    return res.model_copy(update={"replicas": min(hi, max(lo, int(cpus // 2)))})


def vllm_rewrite(ds: ray.data.Dataset, stage: Stage, res: Resources) -> ray.data.Dataset:
    """`expand.backend: vllm`: Ray Data's own LLM processor (vLLM engine, `ray.data.llm`) in the expand
    stage's place. The stage still decides what to rewrite and judges each answer (`ExpandStage.finish`);
    vLLM batches the prompts continuously across its replicas. Needs `pip install 'rushes[vllm]'`."""
    import pickle

    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from stages.recaption import Rewrite, resolve_llm_path

    o = stage.options
    lo, hi = res.replica_range
    config = vLLMEngineProcessorConfig(
        model_source=resolve_llm_path(o.model), engine_kwargs={"dtype": o.dtype, "revision": o.revision},
        batch_size=o.batch_size, concurrency=lo if lo == hi else (lo, hi))

    def pre(row: dict) -> dict:
        r = pickle.loads(row["row"])
        todo = stage.to_rewrite(r) and not stage.keep_as_is(r)
        prompt = r["prompt"] if todo else "-"
        return {"row": pickle.dumps(r, protocol=5), "todo": todo, "start": time.time(),
                "messages": stage.chat(prompt, r.get("style")),
                "sampling_params": {"temperature": o.temperature, "top_p": o.top_p, "seed": r.get("expand_seed"),
                                    "max_tokens": o.max_new_tokens if todo else 1}}

    def post(row: dict) -> dict:
        r = pickle.loads(row["row"])
        if row["todo"]:
            finished = row["num_generated_tokens"] < o.max_new_tokens
            stage.finish(r, Rewrite(row["generated_text"], finished, row.get("num_input_tokens"),
                                    row["num_generated_tokens"]), time.time() - row["start"])
        return {"row": pickle.dumps(r, protocol=5)}

    return build_processor(config, preprocess=pre, postprocess=post)(ds)


def read_plan(batch: pa.Table, storage_options: dict) -> pa.Table:
    """Task operator: the variants of the plan objects named in `batch`."""
    return pa.concat_tables([read_plan_object(uri, storage_options) for uri in batch.column("uri").to_pylist()])


def stages_on_ray(spec: JobSpec, ctx: RunContext) -> list[Stage]:
    """The stages that get an operator in this job, in pipeline order (the template expander, for one,
    did its work while planning)."""
    return [s for s in (cls(getattr(spec, cls.name), ctx) for cls in STAGES) if s.on_ray]


def build_dataset(spec: JobSpec, plan_uris: list[str], ctx: RunContext) -> tuple[ray.data.Dataset, object]:
    """The dataset of records, and the ledger actor (the caller kills it when the dataset is consumed)."""
    stages = stages_on_ray(spec, ctx)
    asks = {s.name: s.options.resources for s in stages}
    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus, gpus = sum(n.get("CPU", 0) for n in alive), sum(n.get("GPU", 0) for n in alive)
    if len(alive) == 1 and not gpus and any(r.num_gpus for r in asks.values()):  # one machine, no GPU
        asks = {name: r.model_copy(update={"num_gpus": 0.0}) for name, r in asks.items()}
        log.warning("no GPU on this machine: the stages run on CPU (their num_gpus requests dropped)")
    asks = {name: auto_replicas(r, cpus, gpus) for name, r in asks.items()}
    wait_for_resources(asks, spec.ray.resource_wait_s)
    crowded = gpus_crowded({s.name: asks[s.name] for s in stages if s.holds_model})
    if crowded:
        log.warning(crowded)
    asks, change = fit_pipeline(stages, asks, cpus)
    if change:  # routine on one machine (a local Ray has max(4, cores) CPUs): said, not warned
        log.info(change)

    # The ledger lives on the driver's node: it must outlive any worker node.
    ledger = AttemptLedger.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote()

    # One task per plan object, its rows then split into blocks of one sample batch: each free sampler
    # takes the next batch, so no replica sits idle while another works through a long block.
    ds = ray.data.from_items([{"uri": u} for u in plan_uris], override_num_blocks=len(plan_uris))
    ds = ds.map_batches(read_plan, fn_kwargs={"storage_options": spec.storage_options}, batch_size=1,
                        batch_format="pyarrow", num_cpus=asks[PLAN_READ].num_cpus)
    ds = ds.repartition(target_num_rows_per_block=spec.sample.batch_size)
    for stage in stages:
        if stage.name == "expand" and stage.options.backend == "vllm":
            ds = vllm_rewrite(ds, stage, asks[stage.name])
            continue
        guarded = GuardedStage(stage, ledger, spec.ray.max_row_attempts, spec.ray.batch_timeout_s)
        args = operator_args(stage, asks[stage.name])
        if stage.holds_model:
            ds = ds.map_batches(actor_class(stage.name), fn_constructor_args=(guarded, spec.ray.setup_attempts),
                                **args)
        else:
            ds = ds.map_batches(task_function(stage.name), fn_kwargs={"guarded": guarded}, **args)
    return ds, ledger


def show_ray_data_progress(show: bool) -> None:
    """Ray Data's own progress output: bars on a terminal, a log line per operator every few seconds
    otherwise. Off while the job draws its own progress line on a terminal (pipeline/progress.py)."""
    ray.data.DataContext.get_current().enable_progress_bars = show
    if not show:  # else it warns once that the bars are off
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
