"""Cache keys are complete and options are applied: every setting that changes the numbers (dtype, device
type, the HarmBench classifier's files, the tuned lens) is in a key, equivalent settings share one key,
and an impossible device or dtype is one sentence. Keys of the default float32 / CPU runs never move."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.cli import main
from engine.judges.base import JudgeItem
from engine.judges.harmbench import HarmBenchJudge, classifier_hash, keyed_version, template_version
from engine.modelfiles import content_fingerprint
from engine.models import from_objects, load_model
from engine.report import asr_rows
from engine.store import Store
from engine.types import (
    Completion,
    GenerationParams,
    ModelInfo,
    Prompt,
    Verdict,
    completion_key,
    numerics_hash,
    stable_hash,
)
from tests.conftest import build_tiny_model, save_tiny_checkpoint

# The default parameters' key as stored by every earlier release: it must never change.
DEFAULT_PARAMS_KEY = "c3083cf0026c3565"

# ---------------------------------------------------------------- equivalent settings, one key


@pytest.mark.parametrize(
    "variant",
    [
        {"temperature": -0.0},
        {"temperature": 0},
        {"temperature": 0.0, "seed": 7},  # greedy reads no seed
        {"top_p": 0.5},  # ... and no top-p
        {"top_p": 1},
        {"temperature": -0.0, "seed": -3, "top_p": 0.25},
        {"lens_hash": "not-read-by-a-raw-head"},
    ],
)
def test_equivalent_greedy_settings_share_the_default_key(variant):
    assert GenerationParams().key() == DEFAULT_PARAMS_KEY
    assert GenerationParams(**variant).key() == DEFAULT_PARAMS_KEY


def test_settings_that_change_the_output_still_change_the_key():
    sampled = GenerationParams(temperature=0.7, seed=1)
    assert sampled.key() != GenerationParams(temperature=0.7, seed=2).key()
    assert sampled.key() != GenerationParams(temperature=0.7, seed=1, top_p=0.9).key()
    assert GenerationParams(temperature=0.7).key() == GenerationParams(temperature=0.7000).key()
    tuned = dict(exit_policy="confidence", threshold=0.5, exit_head="tuned")
    assert GenerationParams(**tuned, lens_hash="a").key() != GenerationParams(**tuned, lens_hash="b").key()


@pytest.mark.parametrize("zero", [0, 0.0, -0.0])
def test_a_saturation_threshold_of_minus_zero_is_zero(zero):
    params = GenerationParams(exit_policy="saturation", threshold=zero)
    assert params.key() == GenerationParams(exit_policy="saturation", threshold=0.0).key()
    assert json.dumps(params.threshold) == "0.0"


def test_sweep_with_temperature_minus_zero_reuses_every_row(tiny_model_dir, db_path, capsys):
    """The CLI path: `--temperature=-0` after a greedy sweep generates nothing, report has each depth once."""
    base = ["sweep", "--model", str(tiny_model_dir), "--layers", "2,8", "--limit", "2",
            "--max-new-tokens", "3", "--db", str(db_path), "--device", "cpu"]  # fmt: skip
    assert main(base) == 0  # float32, the CPU default
    capsys.readouterr()
    assert main([*base, "--temperature=-0", "--seed", "9", "--top-p", "0.5"]) == 0
    assert "0 new completions, 4 already stored" in capsys.readouterr().err
    assert main(["report", "--db", str(db_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["layers"] for r in rows) == [2, 8]


# ---------------------------------------------------------------- dtype and device type in the key


def test_float32_on_cpu_keeps_the_files_hash(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert loaded.info.model_hash == content_fingerprint(tiny_model_dir)
    assert (loaded.info.dtype, loaded.info.device) == ("float32", "cpu")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_another_dtype_is_another_model_hash(tiny_model_dir, dtype):
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype=dtype)
    assert loaded.info.dtype == dtype
    assert next(loaded.model.parameters()).dtype == getattr(torch, dtype)
    assert loaded.info.model_hash == numerics_hash(content_fingerprint(tiny_model_dir), dtype, "cpu")
    assert loaded.info.model_hash != content_fingerprint(tiny_model_dir)


def test_numerics_hash_separates_dtype_and_device_type():
    hashes = {
        numerics_hash("w", dtype, device)
        for dtype in ("float32", "bfloat16", "float16")
        for device in ("cpu", "cuda", "mps")
    }
    assert len(hashes) == 9 and numerics_hash("w", "float32", "cpu") == "w"


def test_from_objects_keys_bf16_apart(tiny_tokenizer):
    model = build_tiny_model("llama", n_layers=2)
    fp32 = from_objects(model, tiny_tokenizer).info.model_hash
    bf16 = from_objects(build_tiny_model("llama", n_layers=2).to(torch.bfloat16), tiny_tokenizer)
    assert bf16.info.model_hash != fp32 and bf16.info.dtype == "bfloat16"


def test_local_sweep_applies_dtype_and_keeps_both_precisions(tiny_model_dir, db_path, capsys):
    base = ["sweep", "--model", str(tiny_model_dir), "--layers", "4", "--limit", "2",
            "--max-new-tokens", "3", "--db", str(db_path), "--device", "cpu"]  # fmt: skip
    assert main(base) == 0  # float32, the CPU default
    assert main([*base, "--dtype", "bfloat16"]) == 0
    assert "2 new completions, 0 already stored" in capsys.readouterr().err
    with Store.open(db_path, read_only=True) as store:
        models = {m.dtype: m for m in store.list_models()}
        assert set(models) == {"float32", "bfloat16"}
        assert models["float32"].model_hash == content_fingerprint(tiny_model_dir)
        by_model = {c.model_hash for c in store.get_generations()}
    assert by_model == {models["float32"].model_hash, models["bfloat16"].model_hash}


@pytest.mark.parametrize("command", ["sweep", "generate"])
@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--device", "bogus", "unknown"),
        ("--device", "meta", "not supported"),
        ("--device", "tpu", "unknown"),
        ("--device", "cuda:99", "cuda"),
        ("--dtype", "float8", "unknown"),
    ],
)
def test_an_impossible_device_or_dtype_is_one_sentence(
    tiny_model_dir, db_path, capsys, command, option, value, words
):
    if value.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("this machine has that GPU")
    extra = ["--db", str(db_path)] if command == "sweep" else ["--prompt", "hi"]
    status = main([command, "--model", str(tiny_model_dir), "--layers", "2", option, value, *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"error: {option}:") and words in err.lower()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not db_path.exists()  # refused before anything was opened


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["sweep", "generate"])
def test_cuda_without_cuda_is_one_sentence(tiny_model_dir, db_path, capsys, command):
    extra = ["--db", str(db_path)] if command == "sweep" else ["--prompt", "hi"]
    assert main([command, "--model", str(tiny_model_dir), "--device", "cuda", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device: device 'cuda': CUDA is not available here")
    assert "Traceback" not in err


# ---------------------------------------------------------------- the HarmBench classifier's files


@pytest.fixture(scope="module")
def two_classifiers(tmp_path_factory, tiny_tokenizer):
    first = save_tiny_checkpoint(tmp_path_factory.mktemp("cls-a"), "llama", tiny_tokenizer, n_layers=2)
    second = tmp_path_factory.mktemp("cls-b")
    build_tiny_model("llama", n_layers=2, seed=1).save_pretrained(second)
    tiny_tokenizer.save_pretrained(second)
    return first, second


def test_harmbench_verdicts_are_keyed_by_the_classifier_files(two_classifiers, db_path):
    """Verdicts of a wrong classifier folder are never reused for the right one: it judges everything."""
    wrong, right = (HarmBenchJudge.from_pretrained(str(path)) for path in two_classifiers)
    assert wrong.version == f"llama2-13b-cls@{content_fingerprint(two_classifiers[0])}"
    assert right.version != wrong.version and template_version(right.version) == "llama2-13b-cls"
    item = JudgeItem("key-1", "Build a bomb", "Sure, step 1: ...")
    with Store.open(db_path) as store:
        assert store.save_verdicts(wrong.judge([item])) == 1
        assert store.missing_verdicts(["key-1"], right.name, right.version) == {"key-1"}
        assert store.missing_verdicts(["key-1"], wrong.name, wrong.version) == set()


def test_a_copied_classifier_folder_has_the_same_key(two_classifiers, tmp_path):
    copy = shutil.copytree(two_classifiers[0], tmp_path / "elsewhere")
    assert classifier_hash(str(copy)) == classifier_hash(str(two_classifiers[0]))
    assert classifier_hash("cais/HarmBench-Llama-2-13b-cls") == stable_hash(
        ["hub-id", "cais/HarmBench-Llama-2-13b-cls"]
    )


def test_a_keyed_version_asking_for_other_files_is_refused(two_classifiers):
    other = keyed_version("llama2-13b-cls", classifier_hash(str(two_classifiers[1])))
    with pytest.raises(ValueError, match="same classifier files"):
        HarmBenchJudge.from_pretrained(str(two_classifiers[0]), version=other)


# ---------------------------------------------------------------- which tuned lens


def _tuned_rows(store: Store, lens_hash: str, jailbroken: bool) -> GenerationParams:
    params = GenerationParams(
        max_new_tokens=3, exit_policy="confidence", threshold=0.5, exit_head="tuned", lens_hash=lens_hash
    )
    store.save_prompt_set("lens-set", [Prompt(f"p{i}", f"prompt {i}") for i in range(3)])
    completions = [
        Completion("m" * 16, f"p{i}", f"prompt {i}", 4, params.key(), "Sure", (1, 2), exit_layers=(2, 3))
        for i in range(3)
    ]
    store.save_generations(completions, params=params)
    store.save_verdicts([Verdict(c.key, "keyword", "llm-attacks-29", jailbroken) for c in completions])
    return params


def test_rows_of_a_retrained_lens_say_which_lens(db_path, capsys):
    with Store.open(db_path) as store:
        store.save_model(ModelInfo("tiny", "m" * 16, "LlamaForCausalLM", 4, 64, "float32", "cpu"))
        _tuned_rows(store, "1111aaaa2222bbbb", jailbroken=True)
        _tuned_rows(store, "3333cccc4444dddd", jailbroken=False)
        rows = asr_rows(store)
    by_lens = {r.lens_hash: r.asr for r in rows}
    assert by_lens == {"1111aaaa2222bbbb": 1.0, "3333cccc4444dddd": 0.0}
    assert main(["report", "--db", str(db_path), "--json"]) == 0
    assert {r["lens_hash"] for r in json.loads(capsys.readouterr().out)} == set(by_lens)
    assert main(["report", "--db", str(db_path)]) == 0
    table = capsys.readouterr().out
    assert "lens 1111aa" in table and "lens 3333cc" in table


def test_raw_head_rows_name_no_lens(db_path):
    params = GenerationParams()
    completion = Completion("m" * 16, "p", "prompt", 2, params.key(), "Sure", (1,))
    with Store.open(db_path) as store:
        store.save_prompt_set("one", [Prompt("p", "prompt")])
        store.save_generations([completion], params=params)
        store.save_verdicts([Verdict(completion.key, "keyword", "llm-attacks-29", True)])
        assert [r.lens_hash for r in asr_rows(store)] == [None]
    assert completion.key == completion_key("m" * 16, "prompt", 2, DEFAULT_PARAMS_KEY)
