"""Ray execution: one actor per worker, each loading the model (or the HarmBench classifier) once on
its own device(s).

The driver hands out work units (a prompt chunk with all its missing depths) to idle actors and yields
each unit's completions as it finishes; the sweep stores them. Faults: an actor process that dies
(killed, host OOM) is restarted by Ray and its unit retried there (``max_restarts``/``max_task_retries``);
if the actor cannot come back the driver resubmits the unit to another actor. A unit's completions
reach the driver only once it is complete, so a dead actor never leaves half a unit behind, and the
store ignores a completion it already holds.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError, WorkerCrashedError

from engine.errors import DepthScopeError
from engine.executors.base import (
    ChunkActivations,
    ClusterUnavailableError,
    ExecutorStopped,
    WorkerFailedError,
    WorkUnit,
    plan_workers,
)
from engine.judges.base import Judge, JudgeItem
from engine.paths import REPO_ROOT
from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict

log = logging.getLogger(__name__)

DEFAULT_PROMPTS_PER_CHUNK = 8
MAX_ATTEMPTS_PER_UNIT = 3  # a unit that kills every worker it meets is not retried forever
WORKER_FAILURES = (RayActorError, OutOfMemoryError, WorkerCrashedError)
# Every wait on Ray has a deadline: workers must have started (model loaded) within START_TIMEOUT_S, and
# some unit must finish within UNIT_TIMEOUT_S of the last one (environment variables override both).
START_TIMEOUT_S = float(os.environ.get("DEPTHSCOPE_RAY_START_TIMEOUT_S", 900))
UNIT_TIMEOUT_S = float(os.environ.get("DEPTHSCOPE_RAY_UNIT_TIMEOUT_S", 3600))
POLL_S = 0.5  # how often a wait looks at the Stop button and its deadline


class GenerationWorker:
    """A Ray actor's body: the model loaded once, then one work unit per call."""

    def __init__(self, model: str, load_kwargs: dict) -> None:
        from engine.models import load_model

        self.loaded = load_model(model, **load_kwargs)

    def describe(self) -> tuple[ModelInfo, int]:
        return self.loaded.info, os.getpid()

    def generate(
        self, unit: WorkUnit, params: GenerationParams, rows_per_batch: int | None
    ) -> list[Completion]:
        from engine.coherence import with_full_depth_nll
        from engine.generation import iter_completions

        completions: list[Completion] = []
        for batch in iter_completions(
            self.loaded,
            list(unit.prompts),
            list(unit.layers),
            params,
            rows_per_batch=rows_per_batch,
            thresholds=list(unit.thresholds) or None,  # dynamic exit: every missing threshold
        ):
            # Scored here, where the model is: the driver holds only a handle (see sweep.generating).
            completions += with_full_depth_nll(self.loaded, batch, params)
        return completions

    def collect(self, prompts: Sequence[Prompt], params: GenerationParams) -> ChunkActivations:
        from engine.executors.local import chunk_activations

        return chunk_activations(self.loaded, prompts, params)


class JudgeWorker:
    """A Ray actor's body for judging: the classifier loaded once, then one chunk of items per call."""

    def __init__(self, name: str, judge_model: str | None, version: str) -> None:
        from engine.judges.registry import get_judge

        self.judge = get_judge(name, judge_model=judge_model, version=version)

    def ready(self) -> int:
        return os.getpid()

    def run(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return self.judge.judge(list(items))


@dataclass(frozen=True)
class RayJudge:
    """A judge whose classifier runs on Ray actors: name and version for the cache keys, no weights here.

    The actors start when :meth:`RayExecutor.judge` is called and stop when it returns, so a classifier
    never holds a GPU that the next model's generation workers need.
    """

    name: str
    version: str
    judge_model: str | None

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        raise TypeError("a RayJudge runs through RayExecutor.judge")


@dataclass
class RayModel:
    """The driver's handle: the model's record and its actors (the weights live only in the actors)."""

    info: ModelInfo
    actors: list = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # worker processes at load time (tests, diagnostics)

    @property
    def n_layers(self) -> int:
        return self.info.n_layers


def connect(address: str = "local", **init_kwargs) -> bool:
    """Join (or start) a Ray cluster unless this process already did; True when this call started it.

    "local" starts a private cluster on this machine; "auto" joins the one ``ray start --head`` runs
    here; anything else is a cluster address (``host:6379`` or ``ray://host:10001``).
    Raises ClusterUnavailableError when nothing answers there.
    """
    if ray.is_initialized():
        return False
    if address == "local":
        init_kwargs.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": _engine_pythonpath()}})
        init_kwargs.setdefault("include_dashboard", False)
        start_watchdog()  # the private cluster dies with this process, even a SIGKILLed one
        ray.init(**init_kwargs)
        return True
    _check_reachable(address)
    try:
        ray.init(address=address, **init_kwargs)
    except ConnectionError as exc:
        raise ClusterUnavailableError(_no_cluster(address, exc)) from exc
    return True


def start_watchdog() -> subprocess.Popen:
    """A small process that ends this process's Ray processes once this process is gone (Ray's own
    fate-sharing misses the agents the raylet starts, which outlive a SIGKILLed driver)."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine.executors.ray_watchdog", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal must not end it before it cleans up
        env={**os.environ, "PYTHONPATH": _engine_pythonpath()},
    )


def _engine_pythonpath() -> str:
    """This checkout first: workers and the watchdog import the engine wherever the driver started."""
    return os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minute-long GCS timeout, when nothing listens at host:port."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterUnavailableError(_no_cluster(address, exc)) from exc


def _no_cluster(address: str, exc: BaseException) -> str:
    return (
        f"no Ray cluster at {address!r} ({exc}): start one with `ray start --head` (then use --ray auto on "
        "that machine, or --ray HEAD_IP:6379 elsewhere), or use --ray local for a private cluster here"
    )


def _shared_path(model: str) -> str:
    """An existing relative path made absolute: workers may run in another directory or on another node."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


class RayExecutor:
    """Generation on ``workers`` Ray actors, each given ``gpus_per_worker`` GPUs, ``cpus_per_worker`` CPUs."""

    def __init__(
        self,
        address: str = "local",
        *,
        workers: int = 2,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        prompts_per_chunk: int | None = None,
        max_restarts: int = 2,
        max_task_retries: int = 2,
        load_kwargs: dict | None = None,
        stop: threading.Event | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        unit_timeout_s: float = UNIT_TIMEOUT_S,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.prompts_per_chunk = prompts_per_chunk or DEFAULT_PROMPTS_PER_CHUNK
        self.load_kwargs = dict(load_kwargs or {})
        self.stop = stop
        self.start_timeout_s, self.unit_timeout_s = start_timeout_s, unit_timeout_s
        self._options = {
            "num_cpus": cpus_per_worker,
            "num_gpus": gpus_per_worker,
            "max_restarts": max_restarts,
            "max_task_retries": max_task_retries,
        }
        self._started_ray = connect(address)
        try:
            # Actors asking for more than any node has would wait forever: refuse, or run what fits.
            nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
            plan = plan_workers(workers, cpus_per_worker, gpus_per_worker, nodes)
        except BaseException:
            self.close()
            raise
        self.workers, self.note = plan.workers, plan.note
        if plan.note:
            log.warning("%s", plan.note)
        self._actor_class = ray.remote(GenerationWorker)

    def load(self, model: str) -> RayModel:
        """Start the actors; each loads ``model`` from a path it can read. All must see the same files."""
        from engine.models import ModelLoadError

        path = _shared_path(model)
        actors = [
            self._actor_class.options(**self._options).remote(path, self.load_kwargs)
            for _ in range(self.workers)
        ]
        try:
            described = self._get([actor.describe.remote() for actor in actors], f"loading {model}")
        except (ExecutorStopped, WorkerFailedError):
            self._kill(actors)
            raise
        except Exception as exc:
            self._kill(actors)
            raise ModelLoadError(f"Ray workers could not load {model}: {_root_cause(exc)}") from exc
        hashes = {info.model_hash for info, _pid in described}
        if len(hashes) > 1:
            self._kill(actors)
            raise ModelLoadError(
                f"Ray workers loaded different files for {model} (hashes {sorted(hashes)}): every node must "
                "read the same model folder (a shared filesystem, or identical copies at the same path)"
            )
        info = replace(described[0][0], model_id=model)
        return RayModel(info, actors, [pid for _info, pid in described])

    def generate(
        self,
        model: RayModel,
        units: Sequence[WorkUnit],
        params: GenerationParams,
        *,
        rows_per_batch: int | None = None,
    ) -> Iterator[list[Completion]]:
        """One unit in flight per actor; completions are yielded unit by unit as they finish."""
        for _index, completions in self._dispatch(
            model.actors, len(units), lambda actor, i: actor.generate.remote(units[i], params, rows_per_batch)
        ):
            yield completions

    def collect(
        self, model: RayModel, chunks: Sequence[Sequence[Prompt]], params: GenerationParams
    ) -> Iterator[tuple[int, ChunkActivations]]:
        """Activations per prompt chunk, computed by the actors; the caller fits the probes."""
        yield from self._dispatch(
            model.actors, len(chunks), lambda actor, i: actor.collect.remote(list(chunks[i]), params)
        )

    def build_judge(self, name: str, *, judge_model: str | None = None, version: str | None = None) -> Judge:
        """The keyword judge runs here (it needs no model); a classifier judge runs on actors."""
        from engine.judges.harmbench import (
            DEFAULT_CLASSIFIERS,
            classifier_hash,
            harmbench_templates,
            infer_version,
            keyed_version,
        )
        from engine.judges.names import HARMBENCH
        from engine.judges.registry import get_judge

        if name != HARMBENCH:
            return get_judge(name, judge_model=judge_model, version=version)
        version = version or infer_version(judge_model)
        harmbench_templates(version)  # a bad version fails here, before any actor loads 13B parameters
        path = _shared_path(judge_model) if judge_model else DEFAULT_CLASSIFIERS[version.partition("@")[0]]
        # Keyed by the classifier's files as the driver sees them; each actor checks it reads the same.
        return RayJudge(name, keyed_version(version, classifier_hash(path)), path)

    def judge(self, judge: Judge, chunks: Sequence[Sequence[JudgeItem]]) -> Iterator[list[Verdict]]:
        """Verdicts chunk by chunk as they finish; classifier actors live for this call only."""
        if not isinstance(judge, RayJudge):
            for chunk in chunks:
                yield judge.judge(list(chunk))
            return
        if not chunks:
            return
        actor_class = ray.remote(JudgeWorker).options(**self._options)
        actors = [
            actor_class.remote(judge.name, judge.judge_model, judge.version)
            for _ in range(min(self.workers, len(chunks)))
        ]
        try:
            try:
                self._get([actor.ready.remote() for actor in actors], f"loading the {judge.name} classifier")
            except ExecutorStopped:
                return
            except WorkerFailedError:
                raise
            except Exception as exc:
                raise WorkerFailedError(
                    f"Ray workers could not load the {judge.name} classifier {judge.judge_model}: "
                    f"{_root_cause(exc)}"
                ) from exc
            for _index, verdicts in self._dispatch(
                actors, len(chunks), lambda actor, i: actor.run.remote(list(chunks[i]))
            ):
                yield verdicts
        finally:
            self._kill(actors)
            actors.clear()

    def _dispatch(
        self, actors: list, n_units: int, call: Callable[[object, int], object]
    ) -> Iterator[tuple[int, object]]:
        """Run units 0..n_units-1 on ``actors``, one in flight per actor; yield (unit, result) as each ends.

        A finished actor gets its next unit before the caller stores the last result, so it never waits.
        An actor that fails after Ray's own restarts and retries leaves ``actors``; its unit goes to another.
        """
        pending = deque(range(n_units))
        attempts: Counter[int] = Counter()
        idle = list(actors)
        in_flight: dict = {}

        def submit() -> None:
            while pending and idle:
                actor, index = idle.pop(0), pending.popleft()
                in_flight[call(actor, index)] = (actor, index)

        submit()
        while in_flight:
            ready = self._next_finished(list(in_flight))
            if ready is None:  # Stop pressed: the caller releases the actors, the store keeps what it has
                return
            actor, index = in_flight.pop(ready)
            try:
                result = ray.get(ready)
            except WORKER_FAILURES as exc:
                self._retire(actors, actor, idle)
                attempts[index] += 1
                if attempts[index] >= MAX_ATTEMPTS_PER_UNIT or not actors:
                    raise WorkerFailedError(
                        f"work unit {index} failed {attempts[index]} time(s), {len(actors)} worker(s) left; "
                        f"last error: {_root_cause(exc)}"
                    ) from exc
                log.warning("worker failed on unit %d (%s); resubmitting it", index, _root_cause(exc))
                pending.appendleft(index)
                submit()
                continue
            except RayTaskError as exc:  # the unit itself raised: the user's error is its own sentence
                user_error = _user_error(exc)
                if user_error is None:
                    raise  # a bug: its remote traceback is what a maintainer needs
                raise user_error from exc
            idle.append(actor)
            submit()
            yield index, result
        if pending:  # unreachable while a worker lives; never end silently with work left
            raise WorkerFailedError(f"{len(pending)} work unit(s) left and no worker to run them")

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _get(self, refs: list, what: str) -> list:
        """``ray.get`` with the start deadline, giving up at once when Stop is pressed."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            _ready, pending = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
            if not pending:
                return ray.get(refs)
            if self._stopped():
                raise ExecutorStopped(f"stopped while {what}")
            if time.monotonic() > deadline:
                raise WorkerFailedError(
                    f"{len(pending)} of {len(refs)} Ray worker(s) were still {what} after "
                    f"{self.start_timeout_s:g} s (DEPTHSCOPE_RAY_START_TIMEOUT_S); the cluster may lack "
                    f"the resources they wait for ({_resources_text()})"
                )

    def _next_finished(self, refs: list):
        """The first of ``refs`` to finish, None when Stop is pressed; WorkerFailedError past the deadline."""
        deadline = time.monotonic() + self.unit_timeout_s
        while True:
            ready, _rest = ray.wait(refs, num_returns=1, timeout=POLL_S)
            if ready:
                return ready[0]
            if self._stopped():
                return None
            if time.monotonic() > deadline:
                raise WorkerFailedError(
                    f"no work unit finished within {self.unit_timeout_s:g} s "
                    "(DEPTHSCOPE_RAY_UNIT_TIMEOUT_S; use a smaller --chunk for slow models)"
                )

    def release(self, model: RayModel) -> None:
        self._kill(model.actors)
        model.actors = []

    def close(self) -> None:
        """Shut Ray down if this executor started it (a cluster joined by address keeps running)."""
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    def _retire(self, actors: list, actor, idle: list) -> None:
        """Ray already restarted and retried this actor as often as allowed: take it out of the pool."""
        if actor in actors:
            actors.remove(actor)
        if actor in idle:
            idle.remove(actor)
        self._kill([actor])

    @staticmethod
    def _kill(actors: Sequence) -> None:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                log.debug("actor already gone", exc_info=True)


def _resources_text() -> str:
    try:
        resources = ray.cluster_resources()
    except Exception:  # noqa: BLE001 — only for a message
        return "its resources are unknown"
    return f"it has {resources.get('CPU', 0):g} CPU(s), {resources.get('GPU', 0):g} GPU(s)"


def _user_error(exc: BaseException) -> DepthScopeError | None:
    """The user-facing error a Ray task raised, unwrapped: Ray's wrapper is an instance of it too, but
    its message carries the remote traceback; None when the task failed otherwise (a bug)."""
    cause = exc.cause if isinstance(exc, RayTaskError) else None
    return cause if isinstance(cause, DepthScopeError) else None


def _root_cause(exc: BaseException) -> str:
    """One line for a message: a user error's own sentence, else the failure's type and last line."""
    user_error = _user_error(exc)
    if user_error is not None:
        return str(user_error)
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
