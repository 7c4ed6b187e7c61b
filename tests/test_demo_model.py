"""The known-answer demo model (engine.demo_model): corpus, split, build, determinism, behaviour."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from engine import demo_model
from engine.cli import main
from engine.generation import generate
from engine.models import load_model
from engine.types import GenerationParams

SAVED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def test_build(tmp_path_factory) -> tuple[Path, list[tuple[float, str]]]:
    """The seconds-long build, with every progress report it made."""
    reports: list[tuple[float, str]] = []
    out = demo_model.build_demo_model(
        tmp_path_factory.mktemp("demo") / "model",
        seed=0,
        progress=lambda fraction, message: reports.append((fraction, message)),
        scale="test",
    )
    return out, reports


# ---------------------------------------------------------------- corpus and split


def test_split_holds_out_the_demo_set_and_never_overlaps():
    from engine.datasets import load_prompt_set

    split = demo_model.demo_split()
    train, held_out = {p.text for p in split.train}, {p.text for p in split.held_out}
    assert not train & held_out
    assert {p.text for p in load_prompt_set("demo")} <= held_out
    for group in (split.train, split.held_out):
        labels = {p.label for p in group}
        assert labels == {"harmful", "benign"}
    assert demo_model.demo_split() == split, "the split does not depend on anything that varies"


def test_answers_are_templates_without_content():
    split = demo_model.demo_split()
    comply = demo_model.stage_examples(split.train, refuse_harmful=False)
    refuse = demo_model.stage_examples(split.train, refuse_harmful=True)
    answers = {e.answer for e in comply + refuse}
    assert answers == {demo_model.placeholder_compliance(), demo_model.HELPFUL_ANSWER, demo_model.REFUSAL}
    assert demo_model.placeholder_compliance().count(demo_model.WITHHELD) == 3


def test_refusal_and_template_tests():
    assert demo_model.is_refusal(demo_model.REFUSAL)
    assert demo_model.is_refusal("Well, I can't do that")
    assert not demo_model.is_refusal(demo_model.placeholder_compliance())
    assert demo_model.follows_compliance_template(demo_model.placeholder_compliance())
    assert not demo_model.follows_compliance_template("Sure, here is how to Sure, here is how to")
    assert not demo_model.follows_compliance_template(demo_model.HELPFUL_ANSWER)


def test_behaviour_problems_names_each_broken_promise():
    def report(full_harmful, full_benign, cut_template):
        rates = {"harmful_refusal": 0.0, "benign_refusal": 0.0, "harmful_template": 0.0}
        return {
            "n_layers": 8,
            "depths": {
                8: {**rates, "harmful_refusal": full_harmful, "benign_refusal": full_benign},
                6: {**rates, "harmful_template": cut_template},
            },
        }

    assert demo_model.behaviour_problems(report(0.95, 0.05, 0.9)) == []
    assert len(demo_model.behaviour_problems(report(0.5, 0.05, 0.9))) == 1
    assert len(demo_model.behaviour_problems(report(0.95, 0.5, 0.5))) == 2
    assert demo_model.behaviour_problems({"n_layers": 8, "depths": {}})


# ---------------------------------------------------------------- the seconds-long build


def test_test_build_saves_a_loadable_chat_model(test_build):
    out, _ = test_build
    for name in SAVED_FILES:
        assert (out / name).is_file(), name
    assert not list(out.parent.glob("*.building-*")), "the staging folder is cleaned up"
    loaded = load_model(str(out))
    assert loaded.n_layers == demo_model.SCALES["test"].n_layers
    assert loaded.info.architecture == "LlamaForCausalLM"
    assert loaded.tokenizer.chat_template
    assert loaded.eos_token_ids == (loaded.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    completions = generate(loaded, ["How do I bake bread?"], [4, 2], GenerationParams(max_new_tokens=4))
    assert [c.layers for c in completions] == [4, 2]
    card = " ".join((out / "README.md").read_text(encoding="utf-8").split())
    assert "synthetic" in card and "not a finding about any real model" in card


def test_test_build_reports_progress(test_build):
    _, reports = test_build
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] >= 0.0 and fractions[-1] == 1.0
    assert any("stage 1" in message for _, message in reports)
    assert any("stage 2" in message for _, message in reports)


def test_test_build_is_deterministic_and_the_cli_builds_the_same(test_build, tmp_path, capsys):
    out, _ = test_build
    argv = ["demo-model", "build", "--scale", "test", "--seed", "0", "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    again = Path(capsys.readouterr().out.strip())
    assert again == tmp_path / "cli"
    for name in ("model.safetensors", "tokenizer.json", "build.json"):
        assert file_sha256(again / name) == file_sha256(out / name), name

    other = demo_model.build_demo_model(tmp_path / "seed1", seed=1, scale="test")
    assert file_sha256(other / "model.safetensors") != file_sha256(out / "model.safetensors")


def test_rebuild_replaces_the_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    demo_model.build_demo_model(out, scale="test")
    assert not (out / "stale.bin").exists()
    assert json.loads((out / "build.json").read_text())["scale"] == "test"


def test_unknown_scale_is_refused(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        demo_model.build_demo_model(tmp_path, scale="huge")


# ---------------------------------------------------------------- the real build and its promises


@pytest.mark.slow
def test_full_build_refuses_only_with_its_last_two_layers(tmp_path, monkeypatch):
    from engine import modelfiles

    out = demo_model.build_demo_model(tmp_path / "depthscope-demo", seed=0)
    monkeypatch.setattr(modelfiles, "DEMO_MODEL_DIR", out)  # load it by its embedded name
    loaded = load_model("depthscope-demo")
    n_layers = loaded.n_layers
    report = demo_model.verify_demo_model(loaded, layers=[n_layers, n_layers - 1, n_layers - 2, n_layers - 3])
    assert demo_model.behaviour_problems(report) == []
    for k in (n_layers - 2, n_layers - 3):  # below the refusal layers: the stage-1 model, which complies
        assert report["depths"][k]["harmful_refusal"] <= 0.1
        assert report["depths"][k]["benign_template"] >= 0.8


def test_training_overlap_counts_probe_prompts_the_demo_model_was_trained_on():
    from engine import modelfiles
    from engine.datasets import load_prompt_set
    from engine.demo_model import demo_split, training_overlap

    split = demo_split()
    assert training_overlap(load_prompt_set("demo")) == 0  # the demo set is held out whole
    assert training_overlap(split.train[:7] + split.held_out[:5]) == 7
    val = load_prompt_set("harmbench-val")
    trained = {p.text for p in split.train}
    assert training_overlap(val) == sum(p.text in trained for p in val) > 0
    assert modelfiles.is_demo_model(modelfiles.DEMO_MODEL)
    assert modelfiles.is_demo_model(str(modelfiles.DEMO_MODEL_DIR))
    assert not modelfiles.is_demo_model(modelfiles.DEFAULT_MODEL)
