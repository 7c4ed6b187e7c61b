"""Frozen records that cross module boundaries (see ../shared/DESIGN.md).

Depth is always stored as ``layers`` (an int k, 1..L); the percentage is derived.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from engine.errors import DepthScopeError
from engine.rules import DEFAULT_RULE, RULE_NAMES, dynamic_rules, is_static, rule_named


def stable_hash(obj: object, length: int = 16) -> str:
    """A short, stable hex digest of a JSON-serialisable object (cache keys)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded: enough to key a cache and to describe the model in the UI."""

    model_id: str  # the name the user gave (path, hub id or an embedded model's name)
    model_hash: str  # content hash or revision: part of every cache key
    architecture: str  # e.g. "LlamaForCausalLM"
    n_layers: int
    hidden_size: int
    dtype: str
    device: str

    def depth_percent(self, layers: int) -> float:
        return 100.0 * layers / self.n_layers


# The numerics every key computed before dtype and device were keyed had: their keys stay unchanged.
BASELINE_NUMERICS = ("float32", "cpu")


def numerics_hash(weights_hash: str, dtype: str, device_type: str) -> str:
    """The model hash cache keys use: the weights' hash, and the dtype and device type the model
    computes in (other kernels, other numbers) unless they are float32 on CPU, whose keys predate this."""
    if (dtype, device_type) == BASELINE_NUMERICS:
        return weights_hash
    return stable_hash(["numerics", weights_hash, dtype, device_type])


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    label: str = "harmful"  # "harmful" | "benign"
    category: str = ""
    context: str = ""  # HarmBench ContextString for contextual behaviours
    source: str = ""  # prompt-set name
    tags: str = ""  # HarmBench Tags (e.g. "hash_check" marks copyright behaviours)


def prompt_key(text: str, context: str = "") -> str:
    """Identity of a prompt: its text plus its (HarmBench) context."""
    return stable_hash(["prompt", text, context])


def model_input(prompt: Prompt) -> str:
    """What the model is asked: HarmBench puts a contextual behaviour's context above it."""
    return f"{prompt.context}\n\n---\n\n{prompt.text}" if prompt.context else prompt.text


def prompt_from_text(text: str, label: str = "") -> Prompt:
    """A prompt the user typed: its id is a hash of its text, its source ``typed``."""
    return Prompt(prompt_id=stable_hash(text, 12), text=text, label=label, source="typed")


class ParamsError(DepthScopeError, ValueError):
    """A generation parameter that cannot be used; ``field`` names it (the CLI turns it into its option)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Below this, logits / temperature overflow float32 and sampling turns into NaNs: use 0 (greedy) instead.
MIN_TEMPERATURE = 1e-3

EXIT_POLICIES: tuple[str, ...] = RULE_NAMES  # engine.rules knows what each one does
EXIT_HEADS: tuple[str, ...] = ("raw", "tuned")

# The early-exit fields and their defaults. A field at its default is left out of the cache key, so
# every static raw-head key computed before early exit existed is still the same key.
EXIT_DEFAULTS: dict[str, object] = {
    "exit_policy": DEFAULT_RULE.name,
    "threshold": 0.0,
    "min_layers": 1,
    "exit_head": "raw",
    "lens_hash": "",
    "draft_layers": 0,
    "draft_tokens": 0,
    "drop_layers": (),
}
DEFAULT_DRAFT_TOKENS = 4


@dataclass(frozen=True)
class GenerationParams:
    """How to generate (checked when built, so no command or page can start a model on nonsense), and
    (early exit) when each generated token leaves the network and how it is read.

    ``exit_policy``: ``static`` (every token exits at the completion's depth k), ``confidence`` (CALM
    softmax response: exit at the first layer >= ``min_layers`` where the exit head's top-1 minus top-2
    probability >= ``threshold``) or ``saturation`` (exit when the cosine between consecutive layers'
    hidden states >= ``threshold``), or ``speculative`` (self-speculative decoding: the first
    ``draft_layers`` layers + final norm + head draft ``draft_tokens`` tokens, the full model verifies
    them; greedy, so the output is the full model's). ``exit_head``: ``raw`` (final norm + LM head) or
    ``tuned`` (the tuned lens whose content hash is ``lens_hash``, then final norm + LM head).
    ``drop_layers``: 1-based decoder layers removed from the network (block removal; the completion's
    ``layers`` is then the count kept). Empty for truncation, which keeps layers 1..k.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    chat_template: bool = True
    system_prompt: str | None = None
    exit_policy: str = DEFAULT_RULE.name
    threshold: float = 0.0
    min_layers: int = 1
    exit_head: str = "raw"
    lens_hash: str = ""
    draft_layers: int = 0
    draft_tokens: int = 0
    drop_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self._normalise_numbers()
        if not _is_whole(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ParamsError(
                "max_new_tokens", f"{self.max_new_tokens!r} is not a whole number ≥ 1: give e.g. 64"
            )
        self._check_temperature(self.temperature)
        if not _is_number(self.top_p) or not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ParamsError("top_p", f"{self.top_p!r} is not usable: give a number in (0, 1], e.g. 0.9")
        if not _is_whole(self.seed):
            raise ParamsError("seed", f"{self.seed!r} is not a whole number")
        self._check_exit()

    def _normalise_numbers(self) -> None:
        """Equal settings, one key: -0.0 and 0 are 0.0, whole numbers given for floats become floats
        (json writes 0 and -0.0 differently from 0.0). Values that are not numbers are left to the checks."""
        for name in ("temperature", "top_p", "threshold"):
            value = getattr(self, name)
            if _is_number(value) and math.isfinite(value):
                object.__setattr__(self, name, float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0

    def _check_exit(self) -> None:
        """Early-exit fields: known policy and head; a finite threshold and min layers ≥ 1 for dynamic
        policies only (a static run exits every token at its depth)."""
        if self.exit_policy not in EXIT_POLICIES:
            raise ParamsError(
                "exit_policy",
                f"exit policy {self.exit_policy!r} is unknown: use one of {', '.join(EXIT_POLICIES)}",
            )
        if self.exit_head not in EXIT_HEADS:
            raise ParamsError(
                "exit_head", f"exit head {self.exit_head!r} is unknown: use one of {', '.join(EXIT_HEADS)}"
            )
        if not _is_number(self.threshold) or not math.isfinite(self.threshold):
            raise ParamsError(
                "threshold", f"threshold {self.threshold!r} is not a finite number: give e.g. 0.9"
            )
        if not _is_whole(self.min_layers) or self.min_layers < 1:
            raise ParamsError(
                "min_layers", f"min layers must be at least 1 (a whole number), got {self.min_layers!r}"
            )
        if not rule_named(self.exit_policy).dynamic and (self.threshold != 0.0 or self.min_layers != 1):
            raise ParamsError(
                "threshold" if self.threshold != 0.0 else "min_layers",
                "threshold and min layers only apply to the "
                f"{' and '.join(r.name for r in dynamic_rules())} exit policies; "
                f"a {self.exit_policy} run exits every token at its depth (--layers)",
            )
        self._check_speculative()
        self._check_drop()

    def _check_speculative(self) -> None:
        if not self.speculative:
            if self.draft_layers or self.draft_tokens:
                raise ParamsError(
                    "draft_layers" if self.draft_layers else "draft_tokens",
                    "draft layers and draft tokens only apply to --exit-policy speculative",
                )
            return
        if not _is_whole(self.draft_layers) or self.draft_layers < 1:
            raise ParamsError(
                "draft_layers", f"speculative decoding needs draft layers ≥ 1, got {self.draft_layers!r}"
            )
        if not _is_whole(self.draft_tokens) or self.draft_tokens < 1:
            raise ParamsError(
                "draft_tokens", f"draft tokens must be a whole number ≥ 1, got {self.draft_tokens!r}"
            )
        if not self.greedy or self.exit_head != "raw":
            raise ParamsError(
                "temperature" if not self.greedy else "exit_head",
                "speculative decoding here is greedy with the raw head (its output then equals the full "
                "model's token for token): use --temperature 0 and --exit-head raw",
            )

    def _check_drop(self) -> None:
        drop = self.drop_layers
        if not isinstance(drop, tuple) or not all(_is_whole(i) and i >= 1 for i in drop):
            raise ParamsError("drop_layers", f"dropped layers must be whole numbers ≥ 1, got {drop!r}")
        if list(drop) != sorted(set(drop)):
            raise ParamsError("drop_layers", f"dropped layers must be sorted and distinct, got {drop!r}")
        if drop and (not is_static(self.exit_policy) or self.exit_head != "raw"):
            raise ParamsError(
                "drop_layers", "dropped layers combine with the static policy and the raw head only"
            )

    @staticmethod
    def _check_temperature(temperature: object) -> None:
        if _is_number(temperature) and (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
            return
        raise ParamsError(
            "temperature",
            f"{temperature!r} is not usable: give 0 for greedy decoding or a finite number "
            f"≥ {MIN_TEMPERATURE:g} to sample",
        )

    def check_fits(self, context_length: int | None) -> None:
        """Refuse a ``max_new_tokens`` that leaves no room for a prompt in the model's context."""
        if context_length is not None and self.max_new_tokens >= context_length:
            raise ParamsError(
                "max_new_tokens",
                f"{self.max_new_tokens} new tokens do not fit this model's context of {context_length} "
                f"positions (prompt + answer): give at most {context_length - 1}, better far fewer",
            )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def dynamic_exit(self) -> bool:
        """True when each token picks its own exit layer (confidence or saturation)."""
        return rule_named(self.exit_policy).dynamic

    @property
    def speculative(self) -> bool:
        """Self-speculative decoding: every token is the full model's, drafted by its first layers."""
        return rule_named(self.exit_policy).drafts

    def key(self) -> str:
        """Cache key of everything that changes the output (early-exit fields only when not default).

        Settings that cannot change the output take their defaults: greedy decoding reads neither the
        seed nor top-p, and only a tuned head reads a lens."""
        fields = asdict(self)
        if self.greedy:
            fields["seed"], fields["top_p"] = 0, 1.0
        if self.exit_head != "tuned":
            fields["lens_hash"] = ""
        for name, default in EXIT_DEFAULTS.items():
            if fields[name] == default:
                del fields[name]
        return stable_hash(fields)


@dataclass(frozen=True)
class Completion:
    model_hash: str
    prompt_id: str
    prompt_text: str
    layers: int
    params_hash: str
    text: str
    token_ids: tuple[int, ...] = field(default_factory=tuple)
    seconds: float = 0.0
    # Prompt tokens dropped from the left so prompt + answer fit the model's context (0: none). A
    # deterministic function of prompt, model and params, so the completion key needs no extra part.
    prompt_truncated_tokens: int = 0
    # The untruncated model's mean NLL (nats/token) of this text given the prompt (engine.coherence);
    # None until scored. A measurement of the completion, not part of its key.
    full_depth_nll: float | None = None
    # The layer count each generated token exited at (1..L), one per token. Static runs: all equal k;
    # dynamic-exit runs keep ``layers`` = L (the network every token may use).
    exit_layers: tuple[int, ...] = field(default_factory=tuple)
    # Self-speculative decoding: drafted tokens the full model accepted / drafted, and the decoder-layer
    # passes actually run per generated token (draft + verification). None for every other rule.
    acceptance_rate: float | None = None
    layer_compute: float | None = None

    @property
    def mean_exit_layers(self) -> float:
        """Layer passes per generated token (compute used = this / L): the mean exit layer, the counted
        draft + verify passes of speculative decoding, or k when no token was generated."""
        if self.layer_compute is not None:
            return self.layer_compute
        return sum(self.exit_layers) / len(self.exit_layers) if self.exit_layers else float(self.layers)

    @property
    def key(self) -> str:
        """Identity of a completion: model, prompt text, depth and generation parameters."""
        return completion_key(self.model_hash, self.prompt_text, self.layers, self.params_hash)


def completion_key(model_hash: str, prompt_text: str, layers: int, params_hash: str) -> str:
    return stable_hash([model_hash, prompt_text, int(layers), params_hash], length=24)


@dataclass(frozen=True)
class Verdict:
    """One judge's decision on one completion. ``jailbroken`` is None when it could not judge."""

    completion_key: str
    judge: str
    version: str
    jailbroken: bool | None
    raw: str = ""
    degenerate: bool = False
    note: str = ""
    # Version of the incoherence detector behind ``degenerate`` ("" = not computed or not recorded):
    # a flag from an older detector is stale and is re-computed on the next judging pass.
    degeneracy_version: str = ""


def check_draft_layers(params: GenerationParams, n_layers: int) -> None:
    """Self-speculative decoding's draft must be shorter than the model (ParamsError otherwise); checked
    when the model's layer count is known: by the decoding loop, and by the dashboard before a run."""
    if not 1 <= params.draft_layers < n_layers:
        raise ParamsError(
            "draft_layers",
            f"draft layers {params.draft_layers} must be below the model's {n_layers} layers "
            f"(1..{n_layers - 1}): the draft is the first k layers, the full model verifies",
        )
