"""What defines a sweep, what it reports while running, and what it returns. Torch-free: pages import it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from engine.depths import DEFAULT_DEPTHS, layers_for, rule_depth
from engine.judges.names import KEYWORD
from engine.types import GenerationParams


@dataclass(frozen=True)
class SweepSpec:
    """Everything that defines a sweep. Depths as percentages unless ``layers`` is given."""

    models: tuple[str, ...]
    prompt_set: str = "demo"
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    layers: tuple[int, ...] | None = None
    judges: tuple[str, ...] = (KEYWORD,)
    judge_model: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    limit: int | None = None
    rows_per_batch: int | None = None
    # Dynamic exit (``params.exit_policy`` confidence or saturation): the thresholds to sweep (default
    # ``[params.threshold]``); every completion then uses up to all L layers and depths are not used.
    thresholds: tuple[float, ...] = ()
    # ``--prune``: the criterion's per-layer scores and the layers it dropped, as JSON (the run's record).
    pruning: str = ""

    def layers_for(self, n_layers: int) -> list[int]:
        if self.params.dynamic_exit:  # every token may climb to L
            return [n_layers]
        if fixed := rule_depth(self.params, n_layers)[1]:  # speculative: L; block removal: layers kept
            return [fixed]
        return layers_for(n_layers, tuple(self.depths), tuple(int(k) for k in self.layers or ()))

    def run_parameters(self, set_id: str) -> dict:
        """What the store records about a run of this sweep."""
        return {**asdict(self), "set_id": set_id, "params_hash": self.params.key()}


@dataclass(frozen=True)
class SweepProgress:
    model: str
    stage: str  # "loading", "generating", "judging", "done"
    done: int
    total: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class SweepSummary:
    run_id: str
    generated: int  # new completions written
    cached: int  # completions that were already stored
    verdicts: int  # new verdicts written
    stopped: bool  # True when ``stop`` was set before the end
