"""Run directories of the training recipes: created without silent overwrites, one atomic checkpoint per trainer.

Task-agnostic: nothing here knows about images, models or losses; ``nmsparse train`` (classification) and the
language-model recipe use it alike. A run directory holds::

    run.json                  marker written first: format tag, task, creation time (tells nmsparse's own
                              directories from a user's)
    config.yaml               resolved settings (what --resume reads)
    checkpoint.safetensors    ONE file per trainer: model tensors, optimizer/sparsifier/RNG state, the epoch, the
                              metrics history and a hash of the config; replaced atomically after every epoch
    metrics.jsonl             one JSON record per epoch, always reconciled with the checkpoint on resume
    summary.json              written once, when the run completes
    <section>/...             further trainers of the same run (e.g. ``baseline/``) with their own checkpoint
                              and metrics; plus whatever outputs the task declares (``curves.png``, ...)

API (see each docstring):

- :meth:`RunDir.prepare` (``train --out``): checks, writing nothing, that a new run may start in a directory:
  refuses (:class:`~nmsparse.errors.OverwriteError`) when files the run would write already exist, unless
  ``overwrite=True`` or the directory is an nmsparse run of the same task that stopped before its first
  checkpoint (then it restarts). :meth:`RunDir.create` then removes the stale files and writes the marker and
  the config.
- :meth:`RunDir.open_resume` (``train --resume``): an existing run; a run without any checkpoint resumes from
  nothing (= starts); a finished run is refused unless ``overwrite=True`` (its summary would be rewritten).
- :meth:`RunDir.save_checkpoint` / :meth:`RunDir.load_checkpoint`: a :class:`Checkpoint` per section, written
  through a temporary file and ``os.replace`` (a kill at any moment leaves the previous or the new checkpoint,
  never a mix); loading checks the format tag, the config hash and the epoch against the history, then rewrites
  ``metrics.jsonl`` to exactly the checkpoint's records (lines of an epoch after the checkpoint are dropped).
  Leftover temporary files of interrupted writes are removed when a run directory is opened.
- :func:`pack_state` / :func:`unpack_state`: nested optimizer/sparsifier/RNG states (dicts with str or int keys,
  lists, tuples, tensors, numpy arrays, numbers, strings) as safetensors tensors plus a JSON skeleton: no pickle.
- :func:`config_hash`: a short, stable hash of a config's ``to_dict()``.

Example:
    >>> import tempfile, torch
    >>> run = RunDir.prepare(tempfile.mkdtemp() + "/run", task="demo")
    >>> run.create(config_text="epochs: 2\\n", config_hash="abc")
    >>> _ = run.save_checkpoint(Checkpoint(epoch=1, config_hash="abc", tensors={"w": torch.ones(2)},
    ...                                    state={"step": 3}, history=[{"epoch": 1, "loss": 0.5}]))
    >>> ckpt = run.load_checkpoint(config_hash="abc")
    >>> ckpt.epoch, ckpt.state, (run.path / "metrics.jsonl").read_text()
    (1, {'step': 3}, '{"epoch": 1, "loss": 0.5}\\n')
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmsparse._version import __version__
from nmsparse.errors import CheckpointError, InputError, OverwriteError
from nmsparse.io import atomic_path, write_text_atomic

__all__ = [
    "RunDir",
    "Checkpoint",
    "pack_state",
    "unpack_state",
    "config_hash",
    "write_text_atomic",
    "MARKER_FILE",
    "CONFIG_FILE",
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "CHECKPOINT_FORMAT",
    "RUN_FORMAT",
]

MARKER_FILE = "run.json"
CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
#: Format tag of run markers and of checkpoints (in the safetensors metadata).
RUN_FORMAT = "nmsparse/run-1"
CHECKPOINT_FORMAT = "nmsparse/checkpoint-1"
#: Files of earlier nmsparse versions (separate weights and trainer state): recognised, not resumable.
_LEGACY_STATE_FILE = "trainer_state.pt"
_BASE_FILES = (MARKER_FILE, CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE)


def config_hash(values: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over the canonical JSON of ``values`` (e.g. a config's ``to_dict()``).

    Example:
        >>> config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
        True
    """
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ state packing


def pack_state(obj: Any, *, prefix: str = "state/") -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors, skeleton)``: ``obj``'s tensors and arrays by generated names, the rest JSON-ready.

    Dicts keep int keys, tuples stay tuples, numpy arrays come back as numpy arrays (see :func:`unpack_state`).

    Raises:
        TypeError: an object that is none of the supported kinds (a bug in the caller's state).

    Example:
        >>> tensors, skeleton = pack_state({"step": 2, 0: (torch.zeros(1), 1.5)})
        >>> unpack_state(tensors, skeleton)
        {'step': 2, 0: (tensor([0.]), 1.5)}
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"{prefix}{len(tensors)}"
            tensors[name] = value.detach().to("cpu").contiguous().clone()
            return {"__tensor__": name}
        if isinstance(value, np.ndarray):
            name = f"{prefix}{len(tensors)}"
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {"__ndarray__": name}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {"__tuple__": [enc(v) for v in value]}
        if isinstance(value, list):
            return [enc(v) for v in value]
        if isinstance(value, Mapping):
            items = []
            for key, item in value.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise TypeError(f"pack_state: dict key {key!r} is not a str or int")
                items.append([key, enc(item)])
            return {"__dict__": items}
        raise TypeError(f"pack_state: cannot store a {type(value).__name__} ({value!r:.80})")

    return tensors, enc(obj)


def unpack_state(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Inverse of :func:`pack_state`.

    Raises:
        CheckpointError: the skeleton names a tensor that is not there, or is malformed.
    """

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if isinstance(value, dict):
            if len(value) != 1:
                raise CheckpointError(f"checkpoint state: unexpected entry {value!r:.80}")
            ((tag, inner),) = value.items()
            if tag in ("__tensor__", "__ndarray__"):
                if inner not in tensors:
                    raise CheckpointError(f"checkpoint state: tensor {inner!r} is missing from the file")
                return tensors[inner].numpy() if tag == "__ndarray__" else tensors[inner]
            if tag == "__tuple__":
                return tuple(dec(v) for v in inner)
            if tag == "__dict__":
                return {key: dec(item) for key, item in inner}
            raise CheckpointError(f"checkpoint state: unknown tag {tag!r}")
        return value

    try:
        return dec(skeleton)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint state is malformed ({exc})") from None


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """Everything one trainer needs to continue after ``epoch`` epochs, stored as one file.

    Attributes:
        epoch: epochs done; equals ``len(history)``.
        config_hash: :func:`config_hash` of the run's settings; resume refuses a checkpoint of other settings.
        tensors: the model's tensors (e.g. :func:`nmsparse.io.pruned_state_dict`'s).
        tensor_metadata: string metadata of the model's tensors (pattern and mode of masked ones).
        state: anything :func:`pack_state` stores: optimizer, sparsifier, RNG states, step and timing counters.
        history: the metrics records of epochs ``1..epoch`` (what ``metrics.jsonl`` holds).
        task: the task that wrote it (informational).
    """

    epoch: int
    config_hash: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    tensor_metadata: dict[str, str] = field(default_factory=dict)
    state: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    task: str = ""


def _write_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    from safetensors.torch import save_file

    if ckpt.epoch != len(ckpt.history):
        raise ValueError(f"checkpoint epoch {ckpt.epoch} but {len(ckpt.history)} history records")
    tensors = {f"model/{k}": v.detach().to("cpu").contiguous().clone() for k, v in ckpt.tensors.items()}
    state_tensors, skeleton = pack_state(ckpt.state)
    tensors.update(state_tensors)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "task": ckpt.task,
        "epoch": str(ckpt.epoch),
        "config_hash": ckpt.config_hash,
        "state": json.dumps(skeleton),
        "history": json.dumps(ckpt.history),
        "tensor_metadata": json.dumps(ckpt.tensor_metadata),
        "nmsparse_version": __version__,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as handle:  # on disk before it replaces the previous checkpoint
            os.fsync(handle.fileno())


def _read_checkpoint(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(
                    f"{path}: not an nmsparse checkpoint (format {metadata.get('format')!r}, expected "
                    f"{CHECKPOINT_FORMAT!r})"
                )
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({' '.join(str(exc).split())[:200]})") from None
    try:
        epoch = int(metadata["epoch"])
        history = json.loads(metadata["history"])
        skeleton = json.loads(metadata["state"])
        tensor_metadata = json.loads(metadata.get("tensor_metadata", "{}"))
        digest = metadata["config_hash"]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: incomplete checkpoint metadata ({exc})") from None
    if not isinstance(history, list) or epoch != len(history):
        raise CheckpointError(f"{path}: says epoch {epoch} but holds {len(history)} metrics records")
    model = {key[len("model/") :]: value for key, value in tensors.items() if key.startswith("model/")}
    state = unpack_state({k: v for k, v in tensors.items() if k.startswith("state/")}, skeleton)
    return Checkpoint(
        epoch=epoch,
        config_hash=digest,
        tensors=model,
        tensor_metadata=tensor_metadata,
        state=state,
        history=history,
        task=metadata.get("task", ""),
    )


def _read_metrics(path: Path) -> list[Any]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise CheckpointError(f"{path}: line {number} is not JSON; the file was edited or damaged") from None
    return records


def _metrics_text(history: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in history)


# ---------------------------------------------------------------------------------------------- run dirs


class RunDir:
    """One run directory (see the module docstring); build it with :meth:`prepare` or :meth:`open_resume`.

    Args:
        path: the directory.
        task: name of the task (``"classify"``, ``"lm"``, ``"compare"``, ...), recorded in the marker.
        outputs: further files (relative paths) the task writes, e.g. ``("curves.png", "model.safetensors")``;
            they count as the run's own for overwrite checks.
        sections: sub-folders of further trainers (e.g. ``("baseline",)``), each with its own checkpoint and
            metrics.
    """

    def __init__(
        self, path: str | Path, *, task: str, outputs: Iterable[str] = (), sections: Iterable[str] = ()
    ) -> None:
        self.path = Path(path)
        self.task = task
        self.outputs = tuple(outputs)
        self.sections = tuple(sections)
        self.restarting = False
        self.resuming = False
        self._stale: list[Path] = []

    # ------------------------------------------------------------------------------------------ inspection

    def own_files(self) -> list[Path]:
        """Every file this run writes (base files, outputs, and the per-section files)."""
        names = list(_BASE_FILES) + list(self.outputs)
        for section in self.sections:
            names += [f"{section}/{name}" for name in (CHECKPOINT_FILE, METRICS_FILE)]
            names += [f"{section}/{name}" for name in self.outputs]
        return [self.path / name for name in dict.fromkeys(names)]

    def marker(self) -> dict[str, Any] | None:
        """The parsed ``run.json`` (``None`` without one, or when it is not an nmsparse marker)."""
        path = self.path / MARKER_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError):
            return None
        return data if isinstance(data, dict) and data.get("format") == RUN_FORMAT else None

    @staticmethod
    def task_of(path: str | Path) -> str | None:
        """The task recorded in ``path``'s marker (``None`` without one)."""
        marker = RunDir(path, task="").marker()
        return None if marker is None else str(marker.get("task"))

    def checkpoints(self) -> list[Path]:
        """Checkpoint files present (root and sections)."""
        paths = [self.section_dir(s) / CHECKPOINT_FILE for s in ("", *self.sections)]
        return [p for p in paths if p.is_file()]

    def section_dir(self, section: str = "") -> Path:
        """Folder of a trainer: the run directory itself for ``""``."""
        return self.path / section if section else self.path

    def clean_temporaries(self) -> list[Path]:
        """Remove temporary files left by interrupted atomic writes (``.<name>.*.tmp``); returns them."""
        removed = []
        for folder in {self.section_dir(s) for s in ("", *self.sections)}:
            if not folder.is_dir():
                continue
            for tmp in folder.glob(".*.tmp"):
                if tmp.is_file():
                    tmp.unlink()
                    removed.append(tmp)
        return removed

    # ------------------------------------------------------------------------------------------- starting

    @classmethod
    def prepare(
        cls,
        path: str | Path,
        *,
        task: str,
        outputs: Iterable[str] = (),
        sections: Iterable[str] = (),
        overwrite: bool = False,
    ) -> RunDir:
        """Check that a new run may start in ``path``; writes nothing (call :meth:`create` once inputs are valid).

        A new run may start when none of its files exist; when the directory is an nmsparse run of the same
        task that stopped before its first checkpoint (it restarts; ``restarting`` is set); or with
        ``overwrite=True`` (the run's files are replaced; other files in the directory are left alone).

        Raises:
            OverwriteError: the run's files exist (an interrupted or finished run, or files nmsparse did not
                write), with how to continue or replace it.
            InputError: ``path`` exists and is not a directory.
        """
        run = cls(path, task=task, outputs=outputs, sections=sections)
        if run.path.exists() and not run.path.is_dir():
            raise InputError(f"{run.path} exists and is not a directory; pick another --out")
        present = [p for p in run.own_files() if p.exists()]
        legacy = [p for p in (run.path / _LEGACY_STATE_FILE,) if p.exists()]
        if not present and not legacy:
            return run
        run._stale = present
        if overwrite:
            run._stale += legacy
            return run
        marker = run.marker()
        checkpoints = run.checkpoints()
        finished = (run.path / SUMMARY_FILE).exists()
        if marker is not None and marker.get("task") == task and not checkpoints and not finished and not legacy:
            run.restarting = True
            return run
        shown = ", ".join(str(p.relative_to(run.path)) for p in (present + legacy)[:4])
        if marker is not None and finished:
            why = f"{run.path} holds a finished {marker.get('task')} run"
        elif marker is not None and marker.get("task") != task:
            why = f"{run.path} holds a {marker.get('task')} run ({shown}), not a {task} one"
        elif marker is not None or legacy:
            resume = " continue it with --resume " + str(run.path) + " or" if marker is not None else ""
            why = f"{run.path} holds an interrupted run ({shown});{resume}"
            raise OverwriteError(f"{why} pass --overwrite to start it again")
        else:
            why = f"{run.path} already holds {shown}, which nmsparse did not create"
        raise OverwriteError(f"{why}; pick another --out or pass --overwrite to replace those files")

    def create(self, *, config_text: str, config_hash: str) -> None:
        """Start the run prepared by :meth:`prepare`: remove its stale files, write the marker and the config."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.clean_temporaries()
        for stale in self._stale:
            if stale.is_file():
                stale.unlink()
        self._stale = []
        # The marker carries the config too: a kill between the two writes leaves a run --resume can restore.
        marker = {
            "format": RUN_FORMAT,
            "task": self.task,
            "config_hash": config_hash,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "nmsparse_version": __version__,
            "config": config_text,
        }
        write_text_atomic(self.path / MARKER_FILE, json.dumps(marker, indent=2) + "\n")
        write_text_atomic(self.path / CONFIG_FILE, config_text)

    # ------------------------------------------------------------------------------------------- resuming

    @classmethod
    def open_resume(
        cls,
        path: str | Path,
        *,
        task: str,
        outputs: Iterable[str] = (),
        sections: Iterable[str] = (),
        overwrite: bool = False,
    ) -> RunDir:
        """An existing run to continue; read its settings from :meth:`config_path`.

        A run that stopped before its first checkpoint resumes from nothing (its first epoch starts again).

        Raises:
            InputError: the directory or its ``config.yaml`` is missing.
            CheckpointError: files of an older nmsparse (``trainer_state.pt``) that cannot be resumed.
            OverwriteError: the run finished already (resuming would rewrite ``summary.json``) and
                ``overwrite`` is false.
        """
        run = cls(path, task=task, outputs=outputs, sections=sections)
        if not run.path.is_dir():
            raise InputError(f"resume: run directory {str(run.path)!r} does not exist")
        marker = run.marker()
        if not (run.path / CONFIG_FILE).is_file() and marker is not None and isinstance(marker.get("config"), str):
            write_text_atomic(run.path / CONFIG_FILE, marker["config"])  # killed between marker and config
        if not (run.path / CONFIG_FILE).is_file():
            raise InputError(
                f"resume: {run.path} holds no {CONFIG_FILE}; it is not an nmsparse run directory "
                f"(start a run there with --out {run.path})"
            )
        if marker is not None and marker.get("task") not in (task, None):
            raise InputError(f"resume: {run.path} is a {marker.get('task')} run, not a {task} one")
        if (run.path / _LEGACY_STATE_FILE).exists() and not run.checkpoints():
            raise CheckpointError(
                f"resume: {run.path} was written by an older nmsparse (separate weights and {_LEGACY_STATE_FILE}, "
                f"not resumable safely); start the run again with --out {run.path} --overwrite"
            )
        if (run.path / SUMMARY_FILE).exists() and not overwrite:
            raise OverwriteError(
                f"resume: the run in {run.path} finished already ({SUMMARY_FILE} is there); "
                f"nothing to resume (pass --overwrite to recompute its summary)"
            )
        run.resuming = True
        run.clean_temporaries()
        return run

    @property
    def config_path(self) -> Path:
        """``config.yaml`` of the run."""
        return self.path / CONFIG_FILE

    # ----------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, checkpoint: Checkpoint, section: str = "") -> Path:
        """Replace the section's checkpoint atomically, then its ``metrics.jsonl`` (from ``checkpoint.history``)."""
        folder = self.section_dir(section)
        if not checkpoint.task:
            checkpoint.task = self.task
        _write_checkpoint(folder / CHECKPOINT_FILE, checkpoint)
        write_text_atomic(folder / METRICS_FILE, _metrics_text(checkpoint.history))
        return folder / CHECKPOINT_FILE

    def load_checkpoint(self, section: str = "", *, config_hash: str | None = None) -> Checkpoint | None:
        """The section's checkpoint, verified, with ``metrics.jsonl`` reconciled; ``None`` when there is none.

        Raises:
            CheckpointError: unreadable file, another format, another config hash, an epoch that disagrees with
                its history, or a ``metrics.jsonl`` whose records disagree with the checkpoint's.
        """
        folder = self.section_dir(section)
        path = folder / CHECKPOINT_FILE
        if not path.is_file():
            return None
        ckpt = _read_checkpoint(path)
        if config_hash is not None and ckpt.config_hash != config_hash:
            raise CheckpointError(
                f"{path}: written with other settings (config hash {ckpt.config_hash}, this run's {config_hash}); "
                f"resume with the run's own {CONFIG_FILE}"
            )
        metrics_path = folder / METRICS_FILE
        on_disk = _read_metrics(metrics_path)
        common = min(len(on_disk), len(ckpt.history))
        for index in range(common):
            if on_disk[index] != ckpt.history[index]:
                raise CheckpointError(
                    f"{metrics_path}: record {index + 1} disagrees with the checkpoint {path}; the files come from "
                    f"different runs"
                )
        if on_disk != ckpt.history:  # lines past the checkpoint (killed in between) are dropped, missing ones added
            write_text_atomic(metrics_path, _metrics_text(ckpt.history))
        return ckpt

    def discard_metrics(self, section: str = "") -> None:
        """Remove a section's ``metrics.jsonl`` written after no checkpoint (a restart from nothing)."""
        path = self.section_dir(section) / METRICS_FILE
        if path.is_file() and not (self.section_dir(section) / CHECKPOINT_FILE).is_file():
            path.unlink()

    # -------------------------------------------------------------------------------------------- summary

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` (once the run completes)."""
        return write_text_atomic(self.path / SUMMARY_FILE, json.dumps(dict(summary), indent=2) + "\n")

    def write_text(self, name: str, text: str) -> Path:
        """Write one of the run's files atomically (``name`` relative to the run directory)."""
        return write_text_atomic(self.path / name, text)
