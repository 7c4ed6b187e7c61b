"""Ray never waits forever: a request no node can meet is refused before any actor starts (or run with
what fits, and said), every wait has a deadline, Stop ends a job and its actors, and a private cluster
leaves no process behind, even when its driver is SIGKILLed.

Deadlines here are polls with generous limits (a loaded 2-core machine), never timing assertions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from engine.executors import (
    ClusterResourcesError,
    ExecutorStopped,
    WorkerFailedError,
    plan_workers,
)

CPU2 = [{"CPU": 2.0}]
GPU_NODES = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]

# ---------------------------------------------------------------- the plan (no Ray needed)


@pytest.mark.parametrize(
    ("requested", "cpus", "gpus", "nodes", "workers"),
    [
        (2, 1.0, 0.0, CPU2, 2),  # exactly what the cluster has
        (1000, 1.0, 0.0, CPU2, 2),  # --workers 1000 on 2 cores: run 2
        (3, 0.5, 0.0, CPU2, 3),  # fractional CPUs
        (4, 1.0, 0.5, GPU_NODES, 4),  # two workers share each GPU
        (8, 1.0, 1.0, GPU_NODES, 2),  # one per GPU
        (5, 3.0, 0.0, [{"CPU": 4.0}, {"CPU": 4.0}], 2),  # Ray never splits a worker over two nodes
    ],
)
def test_the_plan_runs_what_fits(requested, cpus, gpus, nodes, workers):
    plan = plan_workers(requested, cpus, gpus, nodes)
    assert plan.workers == workers
    if workers < requested:
        assert plan.note.startswith(f"--workers {requested}:") and f"running {workers}" in plan.note
    else:
        assert plan.note == ""


@pytest.mark.parametrize(
    ("gpus", "nodes", "words"),
    [
        (1.0, CPU2, "0 GPUs"),  # the example: --gpus-per-worker 1 without a GPU
        (2.0, GPU_NODES, "2 GPUs"),  # two GPUs in the cluster, but never two on one node
        (0.5, [{"CPU": 2.0, "GPU": 0.25}], "0.25 GPUs"),
        (1.0, [], "0 nodes"),
    ],
)
def test_gpus_no_node_has_are_refused_in_one_sentence(gpus, nodes, words):
    with pytest.raises(ClusterResourcesError) as raised:
        plan_workers(2, 1.0, gpus, nodes)
    message = str(raised.value)
    assert message.startswith(f"--gpus-per-worker {gpus:g}:") and words in message
    assert "--gpus-per-worker 0" in message and "\n" not in message


def test_a_worker_bigger_than_every_node_is_refused():
    with pytest.raises(ClusterResourcesError, match="4 CPUs .*the Ray cluster has 4 CPUs and 0 GPUs on 2"):
        plan_workers(1, 4.0, 0.0, [{"CPU": 2.0}, {"CPU": 2.0}])


# ---------------------------------------------------------------- on a local cluster


def finishes(work, limit_s: float = 180.0):
    """Run ``work`` in a thread; its result or exception once it ends, failing if it never does."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 — handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still waiting after {limit_s:g} s"
    return outcome


def unschedulable(executor) -> None:
    """Actors asking for a resource no node has: Ray would keep them pending forever."""
    executor._options["resources"] = {"no-such-resource": 1.0}


@pytest.mark.ray
def test_more_workers_than_fit_run_with_what_fits(ray_cluster):
    from engine.executors.ray_executor import RayExecutor

    executor = RayExecutor(workers=1000)
    assert executor.workers == 2
    assert "--workers 1000" in executor.note and "2 CPUs" in executor.note and "running 2" in executor.note


@pytest.mark.ray
def test_gpus_the_cluster_lacks_are_refused_before_any_actor(ray_cluster):
    from engine.executors.ray_executor import RayExecutor

    before = ray_cluster.available_resources()
    with pytest.raises(ClusterResourcesError, match="--gpus-per-worker 1: .*0 GPUs"):
        RayExecutor(workers=2, gpus_per_worker=1)
    assert ray_cluster.available_resources() == before  # nothing was started or reserved


@pytest.mark.ray
def test_workers_that_never_start_meet_a_deadline(ray_cluster, tiny_model_dir):
    from engine.executors.ray_executor import RayExecutor

    executor = RayExecutor(workers=1, start_timeout_s=3)
    unschedulable(executor)
    outcome = finishes(lambda: executor.load(str(tiny_model_dir)))
    error = outcome.get("error")
    assert isinstance(error, WorkerFailedError), outcome
    assert "DEPTHSCOPE_RAY_START_TIMEOUT_S" in str(error) and "2 CPU(s)" in str(error)


@pytest.mark.ray
def test_a_unit_that_never_finishes_meets_a_deadline(ray_cluster):
    from engine.executors.ray_executor import RayExecutor

    @ray_cluster.remote(num_cpus=0)
    def forever() -> None:
        time.sleep(3600)

    executor = RayExecutor(workers=1, unit_timeout_s=2)
    ref = forever.remote()
    try:
        outcome = finishes(lambda: executor._next_finished([ref]))
    finally:
        ray_cluster.cancel(ref, force=True)
    assert isinstance(outcome.get("error"), WorkerFailedError) and "DEPTHSCOPE_RAY_UNIT_TIMEOUT_S" in str(
        outcome["error"]
    )


@pytest.mark.ray
def test_stop_ends_a_sweep_whose_workers_wait_for_resources(ray_cluster, tiny_model_dir, tmp_path, db_path):
    """The dashboard's Stop: the sweep returns, marked stopped, and its actors are gone."""
    from engine.executors import make_executor
    from engine.store import Store
    from engine.sweep import SweepSpec, run_sweep

    csv = tmp_path / "p.csv"
    csv.write_text("prompt,label\nHello,benign\n")
    stop = threading.Event()
    executor = make_executor("local", workers=1, stop=stop)
    unschedulable(executor)
    killed, kill = [], executor._kill
    executor._kill = lambda actors: (killed.extend(actors), kill(actors))
    spec = SweepSpec(models=(str(tiny_model_dir),), prompt_set=str(csv), layers=(2,))
    threading.Timer(2.0, stop.set).start()
    with Store.open(db_path) as store:
        outcome = finishes(lambda: run_sweep(spec, store, executor=executor, stop=stop))
        assert outcome["value"].stopped and outcome["value"].generated == 0
        assert list(store.list_runs()["status"]) == ["stopped"]
    assert len(killed) == 1  # the actor that waited for resources was ended, not left pending


@pytest.mark.ray
def test_stop_while_units_run_returns_at_once(ray_cluster):
    from engine.executors.ray_executor import RayExecutor

    @ray_cluster.remote(num_cpus=0)
    class Slow:
        def work(self, _index: int) -> None:
            time.sleep(3600)

    stop = threading.Event()
    executor = RayExecutor(workers=1, stop=stop)
    actor = Slow.remote()
    threading.Timer(1.0, stop.set).start()
    try:
        outcome = finishes(lambda: list(executor._dispatch([actor], 3, lambda a, i: a.work.remote(i))))
    finally:
        ray_cluster.kill(actor)
    assert outcome == {"value": []}


def test_an_impossible_gpu_request_on_the_command_line_is_exit_2(tmp_path):
    """A fresh process, as a user runs it: one sentence, exit 2, no traceback, and no hang. (64 GPUs a
    worker: more than any one machine has, GPU machines included.)"""
    pytest.importorskip("ray")
    command = [sys.executable, "-m", "engine", "sweep", "--ray", "local", "--gpus-per-worker", "64",
               "--layers", "1", "--db", str(tmp_path / "x.duckdb")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=os.getcwd(), timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--gpus-per-worker 64: no node can give a worker 64 GPUs" in errors[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "x.duckdb").exists()


# ---------------------------------------------------------------- nothing left behind

DRIVER = """
import sys, time
import ray
from engine.executors.ray_executor import connect

connect("local", num_cpus=1, log_to_driver=False)

@ray.remote(num_cpus=1)
class Actor:
    def pid(self):
        import os
        return os.getpid()

actor = Actor.remote()
ray.get(actor.pid.remote())
print("READY", flush=True)
time.sleep(3600)
"""


def _tree(pid: int) -> dict[int, float]:
    import psutil

    return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}


def _running(processes: dict[int, float]) -> list[int]:
    import psutil

    alive = []
    for pid, started in processes.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.mark.ray
def test_a_sigkilled_local_driver_leaves_no_ray_process(tmp_path):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=os.getcwd(),
    )  # fmt: skip
    try:
        assert driver.stdout.readline().strip() == "READY"
        time.sleep(2)  # the raylet's agents are up by now; the watchdog notes them every second
        processes = _tree(driver.pid)
        assert len(processes) >= 4  # watchdog, GCS, raylet, agents, the actor's worker
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 120
    while _running(processes) and time.monotonic() < deadline:
        time.sleep(1)
    left = _running(processes)
    for pid in left:  # do not leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert left == []


@pytest.mark.ray
def test_stopped_workers_raise_executor_stopped_while_loading(ray_cluster, tiny_model_dir):
    from engine.executors.ray_executor import RayExecutor

    stop = threading.Event()
    executor = RayExecutor(workers=1, stop=stop)
    unschedulable(executor)
    threading.Timer(1.0, stop.set).start()
    outcome = finishes(lambda: executor.load(str(tiny_model_dir)))
    assert isinstance(outcome.get("error"), ExecutorStopped)
