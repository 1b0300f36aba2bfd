"""What a pruning verb did: which layers got masks (and how), which stayed dense and why.

A verb that decides something returns its report, and the report holds the model: :func:`nmsparse.prune_`
returns a :class:`PruneReport` whose ``.model`` is the (in place) pruned model; ``DynamicSparsifier`` keeps its
initial one as ``.report``. The CLI prints :meth:`PruneReport.describe` and run files record
:meth:`PruneReport.to_dict` (without the model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from torch import nn

if TYPE_CHECKING:
    from ..permute import PermuteReport

__all__ = ["PrunedLayer", "PruneReport"]


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
        model: the model the verb pruned (in place), so ``prune_(...).model`` is the model to use next; not part
            of :meth:`to_dict`, of ``repr`` or of ``==``.
        permutation: what ``prune_(..., permute=True)`` permuted first (:class:`~nmsparse.permute.PermuteReport`);
            ``None`` otherwise (and then left out of :meth:`to_dict`).

    Example:
        >>> import torch, nmsparse
        >>> report = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)), "4:8-T")
        >>> [layer.tensor for layer in report.pruned], list(report.skipped)
        (['0.weight'], ['1'])
        >>> type(report.model).__name__, nmsparse.is_pruned(report.model[0])
        ('Sequential', True)
    """

    verb: str
    pattern: str
    method: str
    pruned: list[PrunedLayer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    permutation: PermuteReport | None = field(default=None, repr=False, compare=False)

    @property
    def padded(self) -> list[str]:
        """Names of the layers whose matrix view was zero-padded."""
        return [layer.name for layer in self.pruned if layer.padded_to is not None]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (for run files); the model is left out."""
        pruned = [asdict(layer) for layer in self.pruned]
        for layer in pruned:
            layer["shape"] = list(layer["shape"])
            if layer["padded_to"] is not None:
                layer["padded_to"] = list(layer["padded_to"])
        out: dict[str, Any] = {
            "verb": self.verb,
            "pattern": self.pattern,
            "method": self.method,
            "pruned": pruned,
            "skipped": dict(self.skipped),
        }
        if self.permutation is not None:
            out["permutation"] = self.permutation.to_dict()
        return out

    def describe(self) -> str:
        """One line per pruned and per skipped layer, for printing."""
        lines = [
            f"{self.verb}: {len(self.pruned)} layer(s) pruned to {self.pattern} ({self.method}), "
            f"{len(self.skipped)} left dense"
        ]
        if self.permutation is not None:
            lines.append(f"  {self.permutation.summary().splitlines()[0]}")
        for layer in self.pruned:
            extra = f", padded to {layer.padded_to[0]}x{layer.padded_to[1]}" if layer.padded_to else ""
            extra += ", stored [in, out]" if layer.transposed else ""
            lines.append(
                f"  + {layer.tensor}: {layer.layer_type} {'x'.join(map(str, layer.shape))}, kept "
                f"{100 * layer.kept_magnitude:.2f}% of |w|{extra}"
            )
        lines += [f"  - {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    if not TYPE_CHECKING:  # at run time only, so type checkers still flag these uses
        # Code written when prune_ returned the model: name the fix instead of a bare AttributeError/TypeError.
        def __getattr__(self, name: str) -> NoReturn:
            if not name.startswith("__") and hasattr(nn.Module, name):
                raise AttributeError(
                    f"'PruneReport' object has no attribute {name!r}: prune_ returns a "
                    f"PruneReport; the pruned model is its .model (report.model.{name})"
                )
            raise AttributeError(f"'PruneReport' object has no attribute {name!r}")

        def __getitem__(self, key: Any) -> NoReturn:
            raise TypeError(
                "'PruneReport' object is not subscriptable: prune_ returns a PruneReport; the pruned "
                "model is its .model (report.model[...])"
            )

        def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
            raise TypeError(
                "'PruneReport' object is not callable: prune_ returns a PruneReport; the pruned model "
                "is its .model (report.model(x))"
            )
