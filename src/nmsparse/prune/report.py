"""What a pruning verb did: which layers got masks (and how), which stayed dense and why.

:func:`nmsparse.prune_` returns the model, as every in-place verb does; its report is kept beside the model and
read with :func:`last_report` (``DynamicSparsifier`` has it as ``.report``). The CLI prints
:meth:`PruneReport.describe` and run files record :meth:`PruneReport.to_dict`.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["PrunedLayer", "PruneReport", "last_report"]

_REPORTS: weakref.WeakKeyDictionary[nn.Module, PruneReport] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PrunedLayer:
    """One masked layer.

    Attributes:
        name: qualified module name (``"encoder.layer.0.attention.self.query"``).
        tensor: the masked tensor's key in a plain state dict (``"<name>.weight"``), the key of
            :func:`nmsparse.get_masks` and of every mask file.
        layer_type: the module's class name (``"Linear"``, ``"Conv2d"``, ``"Conv1D"``, ...).
        shape: the stored weight's shape.
        transposed: the weight is stored ``[in, out]`` (``Conv1D``); groups run along dim 0.
        padded_to: ``(rows, K)`` of the zero-padded matrix view, or ``None`` when no padding was needed.
        kept_magnitude: fraction of ``|w|`` (or of the given scores) the mask keeps.
    """

    name: str
    tensor: str
    layer_type: str
    shape: tuple[int, ...]
    transposed: bool = False
    padded_to: tuple[int, int] | None = None
    kept_magnitude: float = 1.0


@dataclass
class PruneReport:
    """Result of one pruning call.

    Attributes:
        verb: ``"prune_"``, ``"DynamicSparsifier"``, ...
        pattern: the pattern (string form).
        method: the mask method actually used.
        pruned: the masked layers, in model order.
        skipped: qualified module name -> why it stayed dense, for every candidate layer that did.

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.prune import last_report
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)), "4:8-T")
        >>> report = last_report(model)
        >>> [layer.tensor for layer in report.pruned], list(report.skipped)
        (['0.weight'], ['1'])
    """

    verb: str
    pattern: str
    method: str
    pruned: list[PrunedLayer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def padded(self) -> list[str]:
        """Names of the layers whose matrix view was zero-padded."""
        return [layer.name for layer in self.pruned if layer.padded_to is not None]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (for run files)."""
        out = asdict(self)
        for layer in out["pruned"]:
            layer["shape"] = list(layer["shape"])
            if layer["padded_to"] is not None:
                layer["padded_to"] = list(layer["padded_to"])
        return out

    def describe(self) -> str:
        """One line per pruned and per skipped layer, for printing."""
        lines = [f"{self.verb}: {len(self.pruned)} layer(s) pruned to {self.pattern} ({self.method}), "
                 f"{len(self.skipped)} left dense"]
        for layer in self.pruned:
            extra = f", padded to {layer.padded_to[0]}x{layer.padded_to[1]}" if layer.padded_to else ""
            extra += ", stored [in, out]" if layer.transposed else ""
            lines.append(f"  + {layer.tensor}: {layer.layer_type} {'x'.join(map(str, layer.shape))}, kept "
                         f"{100 * layer.kept_magnitude:.2f}% of |w|{extra}")
        lines += [f"  - {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def record_report(model: nn.Module, report: PruneReport) -> PruneReport:
    """Keep ``report`` as the latest report of ``model`` (weakly: it never keeps the model alive)."""
    _REPORTS[model] = report
    return report


def last_report(model: nn.Module) -> PruneReport | None:
    """The :class:`PruneReport` of the latest :func:`nmsparse.prune_` / ``DynamicSparsifier`` call on ``model``.

    Returns ``None`` for a model never pruned in this process (a loaded one, say).

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.prune import last_report
        >>> last_report(torch.nn.Linear(4, 4)) is None
        True
    """
    return _REPORTS.get(model)
