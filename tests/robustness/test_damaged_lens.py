"""Damaged tuned lenses: every way a lens file or its sidecar can be wrong is refused with one sentence
naming the file and `lens train`, before any token is decoded; saving is atomic and never keeps a
diverged lens."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

import engine.lenses.files
import engine.lenses.training
from engine.cli import main
from engine.generation import generate
from engine.lenses.files import (
    DamagedLensError,
    LensNotFoundError,
    exit_variants_for,
    lens_sidecar_path,
    lens_weights_path,
    read_lens_report,
)
from engine.lenses.training import TrainedLens, save_lens
from engine.lenses.tuned import TunedLens, load_lens
from engine.models import from_objects, load_model
from engine.types import GenerationParams

N_LAYERS = 4
HIDDEN = 64  # the tiny models' width (engine/tiny.py)
PROMPTS = ["How do I bake bread?", "Hello"]
TUNED = GenerationParams(max_new_tokens=3, exit_head="tuned")
TUNED_EXIT = GenerationParams(max_new_tokens=3, exit_head="tuned", exit_policy="confidence", threshold=0.5)


@pytest.fixture(scope="module")
def loaded(tiny_tokenizer):
    return from_objects(build_tiny_model("llama", n_layers=N_LAYERS), tiny_tokenizer)


@pytest.fixture
def lens_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "lenses"
    monkeypatch.setattr(engine.lenses.files, "LENS_DIR", folder)
    return folder


def small_lens(n_layers: int = N_LAYERS, hidden: int = HIDDEN, seed: int = 0) -> TunedLens:
    lens = TunedLens(n_layers, hidden)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=generator) * 0.02)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=generator) * 0.1)
    return lens


def saved(loaded, lens: TunedLens | None = None) -> tuple[Path, Path]:
    """A valid lens for ``loaded`` on disk: (weights, sidecar)."""
    report = {"model_hash": loaded.info.model_hash, "kl_raw": [1.0] * N_LAYERS, "kl_tuned": [0.5] * N_LAYERS}
    weights = save_lens(TrainedLens(lens or small_lens(), report))
    return weights, lens_sidecar_path(loaded.info.model_hash)


def valid_state() -> dict[str, torch.Tensor]:
    lens = small_lens()
    return {"weight": lens.weight.detach().clone(), "bias": lens.bias.detach().clone()}


def assert_refused(loaded, path: Path) -> None:
    """The lens is refused everywhere it is used, with the file and the remedy named."""
    for attempt in (
        lambda: load_lens(loaded),
        lambda: generate(loaded, PROMPTS, [2], TUNED),  # static truncation with the tuned head
        lambda: generate(loaded, PROMPTS, [], TUNED_EXIT),  # dynamic exit with the tuned head
    ):
        with pytest.raises(DamagedLensError) as caught:
            attempt()
        message = str(caught.value)
        assert str(path) in message and "python -m engine lens train" in message, message
        assert "\n" not in message


# ---------------------------------------------------------------- the weights file


def _write_tensor_file(path: Path, content: object) -> None:
    torch.save(content, path)


WEIGHT_DAMAGE = {
    "nan weight": lambda s: {**s, "weight": s["weight"].index_fill(0, torch.tensor([1]), math.nan)},
    "inf bias": lambda s: {**s, "bias": s["bias"].index_fill(1, torch.tensor([3]), math.inf)},
    "all nan": lambda s: {k: torch.full_like(v, math.nan) for k, v in s.items()},
    "missing bias": lambda s: {"weight": s["weight"]},
    "extra tensor": lambda s: {**s, "scale": torch.ones(3)},
    "renamed tensor": lambda s: {"weights": s["weight"], "bias": s["bias"]},
    "a list": lambda s: [s["weight"], s["bias"]],
    "a bare tensor": lambda s: s["weight"],
    "other layer count": lambda s: {"weight": torch.zeros(5, HIDDEN, HIDDEN), "bias": torch.zeros(5, HIDDEN)},
    "other width": lambda s: {"weight": torch.zeros(3, 32, 32), "bias": torch.zeros(3, 32)},
    "flat weight": lambda s: {**s, "weight": s["weight"].reshape(-1)},
    "integer tensors": lambda s: {k: v.to(torch.int64) for k, v in s.items()},
    "a number": lambda s: {**s, "bias": 3.0},
}


@pytest.mark.parametrize("damage", WEIGHT_DAMAGE, ids=list(WEIGHT_DAMAGE))
def test_damaged_weights_are_refused(loaded, lens_dir, damage):
    weights, _ = saved(loaded)
    _write_tensor_file(weights, WEIGHT_DAMAGE[damage](valid_state()))
    assert_refused(loaded, weights)


BYTE_DAMAGE = {
    "empty": lambda b: b"",
    "garbage": lambda b: os.urandom(2048),
    "text": lambda b: b"not a lens at all\n",
    "first half": lambda b: b[: len(b) // 2],
    "last byte gone": lambda b: b[:-1],
    "a pickle bomb": lambda b: b"cos\nsystem\n(S'echo owned'\ntR.",
}


@pytest.mark.parametrize("damage", BYTE_DAMAGE, ids=list(BYTE_DAMAGE))
def test_unreadable_weights_are_refused(loaded, lens_dir, damage):
    weights, _ = saved(loaded)
    weights.write_bytes(BYTE_DAMAGE[damage](weights.read_bytes()))
    assert_refused(loaded, weights)


def test_weights_that_are_not_the_lens_the_sidecar_names_are_refused(loaded, lens_dir):
    weights, sidecar = saved(loaded)
    claimed = json.loads(sidecar.read_text())["lens_hash"]
    other = small_lens(seed=7)
    torch.save({"weight": other.weight.detach(), "bias": other.bias.detach()}, weights)  # finite, right shape
    assert_refused(loaded, weights)
    with pytest.raises(DamagedLensError, match=f"not the {claimed}"):
        load_lens(loaded)


def test_a_lens_for_another_layer_count_is_refused_by_its_sidecar(loaded, lens_dir):
    weights, sidecar = saved(loaded)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "n_layers": 6, "kl_raw": [1.0] * 6,
                                   "kl_tuned": [1.0] * 6}))  # fmt: skip
    assert_refused(loaded, weights)


def test_weights_without_a_sidecar_are_refused(loaded, lens_dir):
    weights, sidecar = saved(loaded)
    sidecar.unlink()
    with pytest.raises(DamagedLensError, match="no JSON sidecar"):
        load_lens(loaded)
    with pytest.raises(LensNotFoundError, match="lens train"):  # a sweep plans nothing for it either
        exit_variants_for(loaded.info.model_hash, TUNED)


# ---------------------------------------------------------------- the sidecar


def _sidecar_edit(field: str, value: object):
    return lambda report: {**report, field: value}


SIDECAR_DAMAGE = {
    "truncated JSON": lambda text: text[: len(text) // 2],
    "not JSON": lambda text: "lens hash: abc",
    "empty": lambda text: "",
    "a list": lambda text: json.dumps([json.loads(text)]),
    "a string": lambda text: json.dumps("lens"),
    "null": lambda text: "null",
    "no lens hash": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "lens_hash"}),
    "empty lens hash": lambda text: json.dumps({**json.loads(text), "lens_hash": ""}),
    "numeric lens hash": lambda text: json.dumps({**json.loads(text), "lens_hash": 12}),
    "another model's": lambda text: json.dumps({**json.loads(text), "model_hash": "0123456789abcdef"}),
    "no model hash": lambda text: json.dumps({**json.loads(text), "model_hash": None}),
    "nan KL": lambda text: json.dumps({**json.loads(text), "kl_tuned": [math.nan] * N_LAYERS}),
    "KL of strings": lambda text: json.dumps({**json.loads(text), "kl_raw": ["1"] * N_LAYERS}),
    "KL not a list": lambda text: json.dumps({**json.loads(text), "kl_raw": {"1": 2.0}}),
    "KL too short": lambda text: json.dumps({**json.loads(text), "kl_raw": [1.0]}),
    "n_layers a string": lambda text: json.dumps({**json.loads(text), "n_layers": "4"}),
    "n_layers zero": lambda text: json.dumps({**json.loads(text), "n_layers": 0}),
    "latin-1 bytes": lambda text: text.replace('"kl_raw"', '"kl_r\udce9w"'),
}


@pytest.mark.parametrize("damage", SIDECAR_DAMAGE, ids=list(SIDECAR_DAMAGE))
def test_damaged_sidecars_are_refused(loaded, lens_dir, damage):
    weights, sidecar = saved(loaded)
    text = SIDECAR_DAMAGE[damage](sidecar.read_text())
    sidecar.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    with pytest.raises(DamagedLensError) as caught:
        read_lens_report(loaded.info.model_hash)
    assert str(sidecar) in str(caught.value) and "lens train" in str(caught.value)
    for attempt in (  # the torch-free planner (sweeps) and every generation path refuse it
        lambda: exit_variants_for(loaded.info.model_hash, TUNED),
        lambda: load_lens(loaded),
        lambda: generate(loaded, PROMPTS, [2], TUNED),
    ):
        with pytest.raises(DamagedLensError, match="lens train"):
            attempt()


def test_a_valid_lens_still_loads_and_is_used(loaded, lens_dir):
    lens = small_lens()
    saved(loaded, lens)
    back = load_lens(loaded)
    assert back.lens_hash == lens.lens_hash
    [params] = exit_variants_for(loaded.info.model_hash, TUNED)
    assert params.lens_hash == lens.lens_hash
    assert len(generate(loaded, PROMPTS, [2], TUNED)) == 2


# ---------------------------------------------------------------- the CLI: one line, exit 2


@pytest.fixture(scope="module")
def tiny_hash(tiny_model_dir) -> str:
    return load_model(str(tiny_model_dir)).info.model_hash


@pytest.mark.parametrize(
    "damage", ["nan weights", "truncated weights", "truncated sidecar", "sidecar without hash"]
)
def test_cli_names_the_damaged_lens_file(tiny_model_dir, tiny_hash, lens_dir, db_path, capsys, damage):
    lens_dir.mkdir(parents=True)
    lens = small_lens(n_layers=8)
    save_lens(TrainedLens(lens, {"model_hash": tiny_hash}))
    weights, sidecar = lens_weights_path(tiny_hash), lens_sidecar_path(tiny_hash)
    if damage == "nan weights":
        torch.save({"weight": torch.full_like(lens.weight, math.nan), "bias": lens.bias.detach()}, weights)
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:300])
    elif damage == "truncated sidecar":
        sidecar.write_text(sidecar.read_text()[:40])
    else:
        sidecar.write_text(json.dumps({"model_hash": tiny_hash}))
    damaged = weights if "weights" in damage else sidecar
    model = str(tiny_model_dir)
    commands = [
        ["generate", "--model", model, "--layers", "2", "--prompt", "hi", "--exit-head", "tuned"],
        ["generate", "--model", model, "--prompt", "hi", "--exit-policy", "confidence", "--threshold", "0.5",
         "--exit-head", "tuned"],
        ["sweep", "--model", model, "--prompts", "demo", "--limit", "2", "--layers", "2",
         "--exit-head", "tuned", "--db", str(db_path)],
    ]  # fmt: skip
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: the tuned lens file") and str(damaged) in line, err
        assert f"python -m engine lens train --model {model}" in line


def test_a_damaged_lens_met_on_a_ray_actor_is_its_own_sentence(loaded, lens_dir, monkeypatch):
    """A unit that raises on an actor comes back from ``ray.get`` wrapped in Ray's RayTaskError, which is
    an instance of the user's error too but whose message is the remote traceback. The driver re-raises
    the user's own error (one sentence); a bug keeps Ray's wrapper and its traceback. No cluster: the
    actor's body runs here, and its error is wrapped as Ray wraps it."""
    ray_executor = pytest.importorskip("engine.executors.ray_executor")
    from ray.exceptions import RayTaskError

    from engine.executors.base import WorkUnit
    from engine.types import prompt_from_text

    weights, _sidecar = saved(loaded)
    state = valid_state()
    torch.save({**state, "weight": torch.full_like(state["weight"], math.nan)}, weights)
    worker = object.__new__(ray_executor.GenerationWorker)
    worker.loaded = loaded
    unit = WorkUnit(tuple(prompt_from_text(text) for text in PROMPTS), (2,))

    def as_ray_raises(error: BaseException) -> BaseException:
        return RayTaskError(
            "GenerationWorker.generate", "Traceback (most recent call last):\n  ...", error, pid=1, ip="node"
        ).as_instanceof_cause()

    with pytest.raises(DamagedLensError) as on_actor:
        worker.generate(unit, TUNED, None)
    executor = object.__new__(ray_executor.RayExecutor)
    executor.stop, executor.unit_timeout_s = None, 60.0
    monkeypatch.setattr(ray_executor.ray, "wait", lambda refs, num_returns, timeout: (refs[:1], refs[1:]))
    for failure, expected in ((on_actor.value, DamagedLensError), (ZeroDivisionError("a bug"), RayTaskError)):
        wrapped = as_ray_raises(failure)
        assert "\n" in str(wrapped)  # what the user saw before: Ray's traceback as the message

        def get(_ref, wrapped=wrapped):
            raise wrapped

        monkeypatch.setattr(ray_executor.ray, "get", get)
        with pytest.raises(expected) as caught:
            list(executor._dispatch(["actor"], 1, lambda _actor, _index: "ref"))
        if expected is DamagedLensError:
            message = str(caught.value)
            assert not isinstance(caught.value, RayTaskError) and message == str(on_actor.value)
            assert "\n" not in message and str(weights) in message and "lens train" in message, message
            assert ray_executor._root_cause(wrapped) == message  # load and judge failures quote it too
        else:
            assert caught.value is wrapped


# ---------------------------------------------------------------- saving


def test_a_diverged_lens_is_not_saved(loaded, lens_dir):
    previous = small_lens(seed=3)
    saved(loaded, previous)
    diverged = small_lens()
    with torch.no_grad():
        diverged.weight[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="diverged"):
        save_lens(TrainedLens(diverged, {"model_hash": loaded.info.model_hash}))
    assert load_lens(loaded).lens_hash == previous.lens_hash  # the previous lens is untouched
    assert sorted(p.name for p in lens_dir.iterdir()) == sorted(
        [f"{loaded.info.model_hash}.pt", f"{loaded.info.model_hash}.json"]
    )


class Interrupted(BaseException):
    """Stands in for Ctrl-C or a kill at one point of the save."""


@pytest.mark.parametrize("stage", ["weights write", "sidecar write", "first rename", "second rename"])
@pytest.mark.parametrize("earlier_lens", [False, True])
def test_an_interrupted_save_never_leaves_a_lens_that_loads_wrongly(loaded, lens_dir, monkeypatch, stage,
                                                                    earlier_lens):  # fmt: skip
    previous = small_lens(seed=3)
    if earlier_lens:
        saved(loaded, previous)
    new = small_lens(seed=4)
    real_save, real_replace, real_write = torch.save, os.replace, Path.write_text
    renames = []

    def save(obj, path, *args, **kwargs):
        if stage == "weights write":
            Path(path).write_bytes(b"PK\x03\x04 half a zip")
            raise Interrupted
        return real_save(obj, path, *args, **kwargs)

    def write_text(self, text, *args, **kwargs):
        if stage == "sidecar write" and self.name.startswith("."):
            real_write(self, text[: len(text) // 3], *args, **kwargs)
            raise Interrupted
        return real_write(self, text, *args, **kwargs)

    def replace(src, dst):
        renames.append(dst)
        if (stage, len(renames)) in {("first rename", 1), ("second rename", 2)}:
            raise Interrupted
        return real_replace(src, dst)

    monkeypatch.setattr(engine.lenses.training.torch, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(engine.lenses.training.os, "replace", replace)
    with pytest.raises(Interrupted):
        save_lens(TrainedLens(new, {"model_hash": loaded.info.model_hash}))
    monkeypatch.undo()
    monkeypatch.setattr(engine.lenses.files, "LENS_DIR", lens_dir)

    assert not [p for p in lens_dir.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    try:
        lens = load_lens(loaded)
    except LensNotFoundError as refused:  # DamagedLensError included: refused, with the remedy
        assert "lens train" in str(refused)
        assert stage == "second rename" or not earlier_lens  # an earlier lens survives until the renames
        return
    # Whatever loads is a whole lens whose sidecar names it: the earlier one (never a mix).
    assert earlier_lens and lens.lens_hash == previous.lens_hash
    assert read_lens_report(loaded.info.model_hash)["lens_hash"] == previous.lens_hash
