"""Generation-settings scopes: the decoding settings a set of stored answers shares, named in words.

Results are read for one scope at a time (the depth rules and exit thresholds vary inside it), so
answers generated with other settings never join a curve or a headline unnoticed. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from engine.types import GenerationParams

SYSTEM_PROMPT_SHOWN = 40  # characters of a system prompt quoted in a scope's description


@dataclass(frozen=True)
class SettingsScope:
    """The decoding settings that make answers comparable (everything but the exit rule)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    chat_template: bool = True
    system_prompt: str | None = None
    recorded: bool = True  # False: answers stored without their settings (older databases)

    @classmethod
    def of(cls, params: GenerationParams) -> SettingsScope:
        return cls(**{f.name: getattr(params, f.name) for f in fields(cls) if f.name != "recorded"})

    @classmethod
    def from_json(cls, text: str | None) -> SettingsScope:
        """The scope of a stored params JSON (the generations table's ``params``); unrecorded when absent."""
        try:
            stored = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            stored = None
        if not isinstance(stored, dict):
            return cls(recorded=False)
        values = {f.name: stored[f.name] for f in fields(cls) if f.name in stored and f.name != "recorded"}
        try:
            return cls(**values)
        except TypeError:
            return cls(recorded=False)

    @property
    def key(self) -> str:
        """A canonical text naming the scope (session state, filters); never shown to people."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_key(cls, key: str) -> SettingsScope | None:
        try:
            values = json.loads(key)
            return cls(**values) if isinstance(values, dict) else None
        except (TypeError, ValueError):
            return None

    def params(self, **exit_fields) -> GenerationParams:
        """The generation parameters of this scope with the given exit fields (static raw by default)."""
        base = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "recorded"}
        return GenerationParams(**base, **exit_fields)

    def describe(self) -> str:
        """'64 new tokens · greedy · chat template' (sampling, a system prompt: said too)."""
        if not self.recorded:
            return "settings not recorded (answers stored by an older version)"
        parts = [f"{self.max_new_tokens} new token{'s' if self.max_new_tokens != 1 else ''}"]
        if self.temperature <= 0:
            parts.append("greedy")
        else:
            parts.append(
                f"sampled at temperature {self.temperature:g}, top-p {self.top_p:g}, seed {self.seed}"
            )
        parts.append("chat template" if self.chat_template else "no chat template")
        if self.system_prompt:
            quoted = self.system_prompt.strip()
            if len(quoted) > SYSTEM_PROMPT_SHOWN:
                quoted = quoted[: SYSTEM_PROMPT_SHOWN - 1].rstrip() + "…"
            parts.append(f"system prompt “{quoted}”")
        return " · ".join(parts)


def scope_key_of_params(text: str | None) -> str:
    """The scope key of a stored params JSON."""
    return SettingsScope.from_json(text).key
