"""Models are named for people (engine.modelfiles.model_name / model_names): never a path in a headline,
the model's own name when its files give one, two models of one name told apart; the CLI report and the
headlines use the same names, and the full ids stay available."""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine import modelfiles, report
from engine.modelfiles import DEMO_MODEL_DIR, model_name, model_names
from engine.store import Store
from engine.types import Completion, ModelInfo, Prompt, Verdict


def _folder(path: Path, config: dict | None = None, build: dict | None = None) -> str:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama"}), encoding="utf-8")
    if build is not None:
        (path / "build.json").write_text(json.dumps(build), encoding="utf-8")
    return str(path)


def test_embedded_models_and_hub_ids_keep_their_names():
    assert model_name(modelfiles.DEFAULT_MODEL) == "SmolLM2-135M-Instruct"
    assert model_name(modelfiles.DEMO_MODEL) == "DepthScope demo model"
    assert model_name("meta-llama/Llama-2-7b-chat-hf") == "meta-llama/Llama-2-7b-chat-hf"
    assert model_name("gpt2") == "gpt2"


def test_the_demo_models_folder_is_named_as_the_demo_model_relative_or_absolute():
    assert model_name("data/models/depthscope-demo") == "DepthScope demo model"
    assert model_name(str(DEMO_MODEL_DIR)) == "DepthScope demo model"


def test_a_demo_build_elsewhere_is_recognised_by_its_build_record(tmp_path):
    build = {"seed": 0, "scale": "small", "weights_sha256_16": "c1e50576cbfbc9a7"}
    assert model_name(_folder(tmp_path / "copies" / "mine", build=build)) == "DepthScope demo model"
    assert model_name(_folder(tmp_path / "other", build={"seed": 0})) == "other"  # not the builder's record


def test_a_local_folder_is_named_by_its_basename_or_the_hub_id_its_config_confirms(tmp_path):
    assert model_name("/models/Llama-2-7b-chat-hf") == "Llama-2-7b-chat-hf"  # no such folder: its name
    same = _folder(tmp_path / "a" / "Llama-2-7b-chat-hf", {"_name_or_path": "meta-llama/Llama-2-7b-chat-hf"})
    assert model_name(same) == "meta-llama/Llama-2-7b-chat-hf"
    # a fine-tune saved from its base names the base: not this model's name
    tuned = _folder(tmp_path / "my-finetune", {"_name_or_path": "meta-llama/Llama-2-7b-chat-hf"})
    assert model_name(tuned) == "my-finetune"
    saved_from_path = _folder(tmp_path / "x" / "ckpt", {"_name_or_path": "/home/me/ckpt"})
    assert model_name(saved_from_path) == "ckpt"  # a path in the config is no name
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2-0.5B-Instruct" / "snapshots" / ("0123abcd" * 5)
    assert model_name(_folder(snapshot)) == "Qwen/Qwen2-0.5B-Instruct"  # not the commit hash
    assert model_name("/models/gguf/Llama-2-7b-chat.Q4_K_M.gguf") == "Llama-2-7b-chat.Q4_K_M"
    assert model_name("~/models/phi3/") == "phi3"


def test_models_sharing_a_name_are_told_apart_by_their_paths():
    ids = ["/srv/a/Llama-2-7b-chat-hf", "/srv/b/Llama-2-7b-chat-hf", "gpt2", modelfiles.DEMO_MODEL]
    names = model_names([*ids, "data/models/depthscope-demo"])
    assert names["/srv/a/Llama-2-7b-chat-hf"] == "a/Llama-2-7b-chat-hf"
    assert names["/srv/b/Llama-2-7b-chat-hf"] == "b/Llama-2-7b-chat-hf"
    assert names["gpt2"] == "gpt2"
    assert len(set(names.values())) == len(names)  # never two alike
    assert all(name.startswith("DepthScope demo model (") for model, name in names.items() if "demo" in model)
    alone = model_names(["/srv/a/Llama-2-7b-chat-hf", "gpt2"])
    assert alone["/srv/a/Llama-2-7b-chat-hf"] == "Llama-2-7b-chat-hf"  # no collision: the plain name


PROMPTS = [Prompt(f"h{i}", f"harmful request {i}", label="harmful") for i in range(6)]


def _seed(store: Store, model: str, model_hash: str) -> None:
    """Refuses every harmful prompt at 4 of 4 layers, answers every one at 3."""
    store.save_model(ModelInfo(model, model_hash, "LlamaForCausalLM", 4, 64, "float32", "cpu"))
    store.save_prompt_set("set", PROMPTS)
    for layers, jailbroken in ((4, False), (3, True)):
        completions = [
            Completion(model_hash, p.prompt_id, p.text, layers, "params", f"text {p.prompt_id}")
            for p in PROMPTS
        ]
        store.save_generations(completions)
        store.save_verdicts([Verdict(c.key, "keyword", "v1", jailbroken) for c in completions])


def test_headlines_name_models_for_people_and_the_note_gives_their_ids(db_path):
    with Store.open(db_path) as store:
        _seed(store, "/srv/a/Llama-2-7b-chat-hf", "hash-a")
        _seed(store, "/srv/b/Llama-2-7b-chat-hf", "hash-b")
        _seed(store, "data/models/depthscope-demo", "hash-demo")
        rows = report.asr_rows(store, "keyword")
    lines = {model: report.headline(rows, model) for model in {r.model for r in rows}}
    assert lines["data/models/depthscope-demo"].startswith(
        "Removing the last layer of 4 (75 % depth) raises DepthScope demo model's harmful compliance"
    )
    assert "a/Llama-2-7b-chat-hf's harmful compliance" in lines["/srv/a/Llama-2-7b-chat-hf"]
    assert "b/Llama-2-7b-chat-hf's harmful compliance" in lines["/srv/b/Llama-2-7b-chat-hf"]
    assert not any("/srv/" in line or "data/models" in line for line in lines.values())
    mine = [r for r in rows if r.model == "/srv/a/Llama-2-7b-chat-hf"]
    assert "Llama-2-7b-chat-hf's harmful compliance" in report.headline(mine, "/srv/a/Llama-2-7b-chat-hf")
    note = report.models_note(sorted({r.model for r in rows}))
    assert "DepthScope demo model is data/models/depthscope-demo" in note
    assert "a/Llama-2-7b-chat-hf is /srv/a/Llama-2-7b-chat-hf" in note
    assert report.models_note(["gpt2"]) is None  # a hub id is its own name


def test_cli_report_names_models_as_the_pages_do(db_path, capsys):
    from engine.cli import main

    with Store.open(db_path) as store:
        _seed(store, "data/models/depthscope-demo", "hash-demo")
    assert main(["report", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    lines = [line.rstrip() for line in out.splitlines()]
    assert any(line.startswith("set › DepthScope demo model › ") for line in lines), out
    assert "Models: DepthScope demo model is data/models/depthscope-demo." in lines
    headline = next(line for line in lines if "harmful compliance" in line)
    assert "DepthScope demo model's harmful compliance" in headline and "data/models" not in headline


def test_a_local_folder_is_known_however_its_path_was_written(tmp_path, monkeypatch):
    """The CLI may store a folder by a relative path and the dashboard name it absolutely (or the other
    way round): its stored results (probes, headlines) must still be found."""
    from engine import queries

    folder = tmp_path / "models" / "my-model"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with Store.open(tmp_path / "s.duckdb") as store:
        store.save_model(ModelInfo("models/my-model", "h1", "LlamaForCausalLM", 4, 32, "float32", "cpu"))
        store.save_model(ModelInfo("org/other", "h2", "LlamaForCausalLM", 4, 32, "float32", "cpu"))
        assert queries.known_model(store, str(folder)).model_hash == "h1"
        assert queries.known_model(store, "./models/my-model").model_hash == "h1"
        assert queries.known_model(store, "org/other").model_hash == "h2"
        assert queries.known_model(store, "models/absent") is None


def test_the_model_menu_lists_one_folder_once(tmp_path):
    """A folder stored by a relative path and chosen by its absolute one (the server resolves its model
    setting) is one model: the menu lists it once, so it is not told apart from itself by its path."""
    from engine.paths import REPO_ROOT

    folder = tmp_path / "m"
    folder.mkdir()
    relative = os.path.relpath(folder, REPO_ROOT)
    ids = [str(folder), relative, "org/hub-model", "org/hub-model", str(folder) + "/"]
    assert modelfiles.one_per_model(ids) == [str(folder), "org/hub-model"]
    assert modelfiles.one_per_model([modelfiles.DEMO_MODEL, str(DEMO_MODEL_DIR)]) == [modelfiles.DEMO_MODEL]
