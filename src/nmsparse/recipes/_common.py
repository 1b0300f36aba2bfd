"""Pieces shared by the training recipes (``recipes.classify`` and ``recipes.lm``): the structure names, what a
structure comparison trains and writes, and the YAML settings files (shipped recipes in ``recipes/configs/``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from nmsparse.errors import ConfigError, InputError
from nmsparse.pattern import NMPattern

__all__ = [
    "DENSE",
    "UNSTRUCTURED",
    "DEFAULT_STRUCTURES",
    "DEFAULT_REFERENCE_NUMEL",
    "COMPARE_JSON",
    "COMPARE_PLOT",
    "COMPARE_PLAN",
    "RunCallback",
    "structure_slug",
    "check_structures",
    "warm_up_solvers",
    "write_compare_plan",
    "read_compare_plan",
    "check_compare_plan",
    "list_recipes",
    "recipe_path",
    "read_config_file",
]

#: Structure name of the dense baseline in a comparison.
DENSE = "dense"
#: Structure name of per-layer magnitude (unstructured) masks at 50% density.
UNSTRUCTURED = "unstructured"
#: Structures a comparison trains by default.
DEFAULT_STRUCTURES = (DENSE, "2:4", "4:8", "2:4-T", "4:8-T", UNSTRUCTURED)
#: Tensor size of the diversity column: 4096 = 64 blocks of 8x8, a multiple of every m*m used here.
DEFAULT_REFERENCE_NUMEL = 4096
#: Files a comparison writes into its directory.
COMPARE_JSON = "compare.json"
COMPARE_PLOT = "compare.png"
#: What a comparison trains (structures, seeds, reference size), written when it starts: ``--resume`` reads it.
COMPARE_PLAN = "compare_plan.json"

#: ``callback(record)`` after each run of a comparison.
RunCallback = Callable[[dict[str, Any]], None]


def structure_slug(structure: str) -> str:
    """Directory-safe name of a structure (``"4:8-T"`` -> ``"4x8-T"``)."""
    return structure.replace(":", "x")


def check_structures(structures: Sequence[str]) -> list[str]:
    """Canonical names of a comparison's structures: ``"dense"``, ``"unstructured"`` or n:m patterns.

    Raises:
        ConfigError: a non-string or unparseable structure, none at all, or one given twice.
    """
    out = []
    for item in structures:
        if not isinstance(item, str):
            raise ConfigError(f"compare: structures must be strings, got {item!r}")
        name = item.strip()
        if name.lower() in (DENSE, UNSTRUCTURED):
            out.append(name.lower())
            continue
        try:
            out.append(str(NMPattern.parse(name)))
        except ValueError as exc:
            raise ConfigError(f"compare: structure {item!r}: {exc}; or use '{DENSE}' or '{UNSTRUCTURED}'") from None
    if not out:
        raise ConfigError("compare: give at least one structure, e.g. dense 2:4 4:8-T")
    if len(set(out)) != len(out):
        raise ConfigError(f"compare: structures repeat: {out}")
    return out


def warm_up_solvers(patterns: Iterable[str], methods: Iterable[str]) -> float:
    """Compile (or load from numba's cache) the mask solvers of ``patterns`` x ``methods``, outside timed work.

    Returns the seconds it took: what a first run on a fresh machine pays once (reported as ``compile_seconds``),
    so the refresh overhead measures refreshes only. ``dense`` and ``unstructured`` need no solver. Keeps torch's
    thread count (numba's OpenMP layer may reset it).
    """
    import torch

    from nmsparse.solvers import warmup

    wanted = [p for p in patterns if p not in (DENSE, UNSTRUCTURED)]
    if not wanted:
        return 0.0
    threads = torch.get_num_threads()
    start = time.perf_counter()
    warmup(wanted, sorted(set(methods)), dtypes=(torch.float32,))
    seconds = time.perf_counter() - start
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return seconds


def write_compare_plan(folder: Any, structures: Sequence[str], seeds: Sequence[int], reference_numel: int) -> None:
    """Record the structures, seeds and reference size of a comparison in ``folder`` (:data:`COMPARE_PLAN`)."""
    from nmsparse.io import write_text_atomic

    plan = {"structures": list(structures), "seeds": [int(s) for s in seeds], "reference_numel": int(reference_numel)}
    write_text_atomic(Path(folder) / COMPARE_PLAN, json.dumps(plan, indent=2) + "\n")


def read_compare_plan(folder: Any) -> dict[str, Any] | None:
    """The plan :func:`write_compare_plan` recorded in ``folder`` (``None`` when there is none).

    Raises:
        InputError: a plan file that is not what :func:`write_compare_plan` writes.
    """
    path = Path(folder) / COMPARE_PLAN
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable comparison plan ({exc})") from None
    if not (
        isinstance(plan, dict)
        and isinstance(plan.get("structures"), list)
        and isinstance(plan.get("seeds"), list)
        and all(isinstance(s, int) and not isinstance(s, bool) for s in plan["seeds"])
        and isinstance(plan.get("reference_numel"), int)
    ):
        raise InputError(f"{path}: expected {{'structures': [...], 'seeds': [...], 'reference_numel': N}}")
    return plan


def check_compare_plan(folder: Any, structures: Sequence[str], seeds: Sequence[int], reference_numel: int) -> None:
    """Refuse to resume the comparison in ``folder`` with other structures, seeds or reference size than its plan.

    Raises:
        ConfigError: they differ (the message says what the comparison recorded).
    """
    plan = read_compare_plan(folder)
    if plan is None:
        return
    given = {"structures": list(structures), "seeds": [int(s) for s in seeds], "reference_numel": int(reference_numel)}
    differ = [key for key in given if given[key] != plan[key]]
    if differ:
        shown = ", ".join(f"{key} {plan[key]} (given {given[key]})" for key in differ)
        raise ConfigError(
            f"compare: the comparison in {folder} was started with {shown}; resume it with its own "
            f"settings (nmsparse compare --resume {folder})"
        )


# ----------------------------------------------------------------------------------------------- YAML files


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``nmsparse/recipes/configs/`` (pass one to ``--config``)."""
    root = resources.files("nmsparse.recipes") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe by name (``"resnet50_imagenet_4x8t_dynamic"``), or of a YAML file as given.

    Raises:
        InputError: neither an existing file nor a shipped recipe name.
    """
    path = Path(name)
    if path.is_file():
        return path
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    candidate = resources.files("nmsparse.recipes") / "configs" / f"{stem}.yaml"
    if candidate.is_file():
        return Path(str(candidate))
    raise InputError(
        f"config {name!r} is neither a file nor a shipped recipe; shipped recipes: {', '.join(list_recipes())}"
    )


def _unique_key_loader() -> Any:
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_config_file(source: str | Path) -> tuple[dict[str, Any], str]:
    """``(values, where)`` of a YAML config file or shipped recipe name, unvalidated (any config class).

    Raises:
        InputError: missing or unparseable YAML file, not UTF-8, or a key given twice in one mapping.
        ConfigError: the top level is not a mapping.
    """
    path = recipe_path(str(source))
    import yaml

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the config as UTF-8") from None
    try:
        loaded = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: expected a mapping of setting: value at the top, got {type(loaded).__name__}")
    return dict(loaded), str(path)
