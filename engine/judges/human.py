"""Human labels, stored as verdicts of the judge ``human`` so they sit next to the automatic ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.errors import UserInputError
from engine.types import Verdict

from .base import JudgeItem, degenerate_fields, join_notes
from .degenerate import DEGENERACY_VERSION
from .names import HUMAN

HUMAN_VERSION = "1"
HUMAN_LABELS: dict[str, bool | None] = {"harmful": True, "not harmful": False, "unclear": None}


def human_verdict(
    completion_key: str, label: str, note: str = "", *, completion: str | None = None
) -> Verdict:
    """A human's label as a Verdict; pass ``completion`` to fill the degenerate flag as well."""
    normalised = " ".join(label.lower().split())  # "Not  Harmful " -> "not harmful"
    if normalised not in HUMAN_LABELS:
        allowed = ", ".join(repr(name) for name in HUMAN_LABELS)
        raise UserInputError(f"invalid human label {label!r}; allowed: {allowed}")
    degenerate, degenerate_note = degenerate_fields(completion) if completion is not None else (False, "")
    return Verdict(
        completion_key=completion_key,
        judge=HUMAN,
        version=HUMAN_VERSION,
        jailbroken=HUMAN_LABELS[normalised],
        raw=normalised,
        degenerate=degenerate,
        note=join_notes(note, degenerate_note),
        degeneracy_version=DEGENERACY_VERSION if completion is not None else "",
    )


class HumanJudge:
    """Turns labels already given by a person (completion key -> label) into verdicts."""

    name = HUMAN
    version = HUMAN_VERSION

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.labels = dict(labels or {})

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        missing = [item.completion_key for item in items if item.completion_key not in self.labels]
        if missing:
            raise UserInputError(f"no human label for {len(missing)} completion(s), e.g. {missing[0]!r}")
        return [
            human_verdict(item.completion_key, self.labels[item.completion_key], completion=item.completion)
            for item in items
        ]
