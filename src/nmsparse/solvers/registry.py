"""The solver registry: the only place that maps ``find_mask(method=..., backend=...)`` to code.

A *solver* is one implementation (a *backend*: ``"torch"``, ``"numba"``, ``"triton"``, ...) of one *method*
(``"topn"``, ``"exact"``, ``"greedy"``, ``"greedy-repair"``, ...). Each registration declares what it can do, and
:func:`nmsparse.find_mask` picks one that can run the request, calls it, then checks its result (a wrong result
raises :class:`~nmsparse.errors.SolverError` naming the solver). A new solver is tested by registering it: the
contract test (``tests/contract/test_solver_contract.py``) runs every registration through the same checks.

Registering a solver (the signature is stable)::

    register_solver(
        name,                  # method name, e.g. "exact"; several backends may share one name
        fn,                    # (scores [rows, K], pattern: NMPattern, progress: bool | None) -> bool [rows, K]
        *,
        backend="torch",       # implementation name; (name, backend) is unique
        plain=False,           # solves plain n:m patterns (groups of m consecutive columns)
        transposable=False,    # solves n:m-T patterns (aligned m x m blocks)
        ms=None,               # m values it accepts (None: every m)
        devices=None,          # device types it accepts, e.g. {"cpu"} or {"cuda"} (None: every device)
        dtypes=(torch.float32, torch.float64),  # score dtypes ``fn`` is handed (see below)
        exact=False,           # the result is optimal (most kept score) for every request it accepts
        exactly_n=False,       # keeps exactly n per group / block row and column (else at most n)
        priority=0,            # backend="auto" takes the highest priority that can run (ties: registered first)
        available=None,        # () -> bool: can it run in this process (optional dependency importable, ...)?
        description="",        # one line for `nmsparse info` and error messages
        replace=False,         # allow replacing an existing (name, backend) registration
    )

What ``fn`` receives and must return:

* ``scores``: a contiguous ``[rows, K]`` floating matrix (the matrix view of the weight: Conv2d weights are
  ``[out, kh*kw*in]``), finite, possibly negative, on the weight's device, of one of the declared ``dtypes``:
  scores already in one of them are passed as they are; fp16/bf16 scores are widened to float32 when float32 is
  declared (order-preserving). Other requests are not routed to ``fn``. ``rows`` and ``K`` are multiples of
  ``m`` where the pattern needs it (``K`` always; ``rows`` for transposable patterns).
* ``pattern``: the :class:`~nmsparse.NMPattern` (plain or transposable, as declared).
* ``progress``: show a progress bar (``None``: only for long work on a terminal); may be ignored.
* return: a ``torch.bool`` tensor of ``scores``' shape on ``scores``' device, ``True`` = keep, obeying the
  pattern (exactly ``n`` when ``exactly_n``, else at most ``n``). Ties should go to the lower flat index.

Example:
    >>> import torch
    >>> from nmsparse.solvers import find_mask, register_solver, unregister_solver
    >>> def first_n(scores, pattern, progress):  # keeps the first n of every group: valid, not optimal
    ...     groups = torch.zeros(scores.shape[0], scores.shape[1] // pattern.m, pattern.m, dtype=torch.bool,
    ...                          device=scores.device)
    ...     groups[..., :pattern.n] = True
    ...     return groups.reshape(scores.shape)
    >>> register_solver("first-n", first_n, plain=True, exactly_n=True, description="toy").label
    'first-n/torch'
    >>> find_mask(torch.randn(1, 4), "2:4", method="first-n").tolist()
    [[True, True, False, False]]
    >>> unregister_solver("first-n")
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import torch

from ..errors import BackendUnavailableError, ConfigError
from ..pattern import NMPattern

__all__ = [
    "MatrixSolver",
    "SolverSpec",
    "register_solver",
    "unregister_solver",
    "registered_solver",
    "list_methods",
    "list_solvers",
    "available_backends",
    "select_solver",
    "normalize_method",
    "resolve",
    "ResolvedSolver",
    "numba_available",
]

#: ``(scores [rows, K] float, pattern, progress) -> bool mask [rows, K]``.
MatrixSolver = Callable[[torch.Tensor, NMPattern, "bool | None"], torch.Tensor]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SolverSpec:
    """What one registered solver is and can do (see the module docstring for each field)."""

    name: str
    backend: str
    fn: MatrixSolver
    plain: bool
    transposable: bool
    ms: frozenset[int] | None
    devices: frozenset[str] | None
    dtypes: tuple[torch.dtype, ...]
    exact: bool
    exactly_n: bool
    priority: int
    available: Callable[[], bool] | None
    description: str

    @property
    def label(self) -> str:
        """``"method/backend"``, e.g. ``"exact/numba"``."""
        return f"{self.name}/{self.backend}"

    def is_available(self) -> bool:
        """Whether it can run in this process (its optional dependency is importable, ...)."""
        return True if self.available is None else bool(self.available())

    def score_dtype(self, dtype: torch.dtype) -> torch.dtype | None:
        """The dtype ``fn`` gets for scores of ``dtype``, or ``None`` when it cannot take them."""
        if dtype in self.dtypes:
            return dtype
        if dtype in (torch.float16, torch.bfloat16) and torch.float32 in self.dtypes:
            return torch.float32
        return None

    def why_not(self, pattern: NMPattern, device: str, dtype: torch.dtype) -> str | None:
        """Why this solver cannot run the request, or ``None`` when it can."""
        if pattern.transposable and not self.transposable:
            return "plain patterns only"
        if not pattern.transposable and not self.plain:
            return "transposable patterns only"
        if self.ms is not None and pattern.m not in self.ms:
            return f"m in {sorted(self.ms)} only"
        if self.devices is not None and device not in self.devices:
            return f"devices {sorted(self.devices)} only"
        if self.score_dtype(dtype) is None:
            return f"dtypes {[str(d).removeprefix('torch.') for d in self.dtypes]} only"
        if not self.is_available():
            return "not available here (missing dependency or hardware)"
        return None


_SOLVERS: dict[tuple[str, str], SolverSpec] = {}


def register_solver(
    name: str,
    fn: MatrixSolver,
    *,
    backend: str = "torch",
    plain: bool = False,
    transposable: bool = False,
    ms: Collection[int] | None = None,
    devices: Collection[str] | None = None,
    dtypes: Collection[torch.dtype] = (torch.float32, torch.float64),
    exact: bool = False,
    exactly_n: bool = False,
    priority: int = 0,
    available: Callable[[], bool] | None = None,
    description: str = "",
    replace: bool = False,
) -> SolverSpec:
    """Register ``fn`` as backend ``backend`` of mask method ``name`` (see the module docstring).

    Returns:
        The :class:`SolverSpec` stored.

    Raises:
        ConfigError: a bad declaration (empty name, no pattern kind, unknown dtype, ...) or an existing
            ``(name, backend)`` without ``replace=True``.

    Example:
        >>> import torch
        >>> from nmsparse.solvers.topn import topn_matrix
        >>> spec = register_solver("my-topn", topn_matrix, plain=True, exact=True, exactly_n=True)
        >>> spec.label
        'my-topn/torch'
        >>> unregister_solver("my-topn")
    """
    where = "register_solver"
    for label, value in (("name", name), ("backend", backend)):
        if not isinstance(value, str) or not value or value == "auto" or value != value.strip():
            raise ConfigError(f"{where}: {label} must be a non-empty string other than 'auto', got {value!r}")
    if not callable(fn):
        raise ConfigError(f"{where}: fn must be callable (scores, pattern, progress) -> mask, got {fn!r}")
    if not (plain or transposable):
        raise ConfigError(f"{where}: {name}/{backend} must take plain=True and/or transposable=True patterns")
    if ms is not None:
        ms = frozenset(int(m) for m in ms)
        if not ms or min(ms) < 2:
            raise ConfigError(f"{where}: ms must be None or a non-empty set of block sizes >= 2, got {sorted(ms)}")
    dtype_tuple = tuple(dtypes)
    if not dtype_tuple or any(d not in _FLOAT_DTYPES for d in dtype_tuple):
        raise ConfigError(f"{where}: dtypes must be floating dtypes from {_FLOAT_DTYPES}, got {dtype_tuple}")
    key = (name, backend)
    if key in _SOLVERS and not replace:
        raise ConfigError(f"{where}: {name}/{backend} is already registered; pass replace=True to replace it")
    spec = SolverSpec(
        name=name,
        backend=backend,
        fn=fn,
        plain=bool(plain),
        transposable=bool(transposable),
        ms=ms,
        devices=None if devices is None else frozenset(devices),
        dtypes=dtype_tuple,
        exact=bool(exact),
        exactly_n=bool(exactly_n),
        priority=int(priority),
        available=available,
        description=description,
    )
    _SOLVERS[key] = spec
    return spec


def unregister_solver(name: str, backend: str = "torch") -> None:
    """Remove the ``(name, backend)`` registration.

    Raises:
        ConfigError: nothing is registered under that name and backend.
    """
    try:
        del _SOLVERS[(name, backend)]
    except KeyError:
        raise ConfigError(f"unregister_solver: no solver {name}/{backend}; registered: {_labels()}") from None


@contextlib.contextmanager
def registered_solver(name: str, fn: MatrixSolver, **kwargs: object) -> Iterator[SolverSpec]:
    """Context manager: :func:`register_solver` on entry, :func:`unregister_solver` on exit (for tests).

    Example:
        >>> from nmsparse.solvers.topn import topn_matrix
        >>> with registered_solver("tmp-topn", topn_matrix, plain=True) as spec:
        ...     "tmp-topn" in list_methods()
        True
        >>> "tmp-topn" in list_methods()
        False
    """
    spec = register_solver(name, fn, **kwargs)  # type: ignore[arg-type]
    try:
        yield spec
    finally:
        if _SOLVERS.get((spec.name, spec.backend)) is spec:
            del _SOLVERS[(spec.name, spec.backend)]


def _labels() -> list[str]:
    return [spec.label for spec in _SOLVERS.values()]


def list_methods() -> list[str]:
    """Names accepted by ``find_mask(method=...)``, ``"auto"`` first.

    Example:
        >>> list_methods()[:2]
        ['auto', 'exact']
    """
    return ["auto", *sorted({name for name, _ in _SOLVERS})]


def list_solvers(method: str | None = None) -> list[SolverSpec]:
    """Every registration (of ``method`` when given), in registration order."""
    return [spec for spec in _SOLVERS.values() if method is None or spec.name == method]


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends with at least one solver that can run here (on ``device``'s type when given), sorted.

    Example:
        >>> "torch" in available_backends("cpu")
        True
    """
    kind = None if device is None else torch.device(device).type
    return sorted(
        {
            spec.backend
            for spec in _SOLVERS.values()
            if (kind is None or spec.devices is None or kind in spec.devices) and spec.is_available()
        }
    )


def select_solver(method: str, backend: str, pattern: NMPattern, device: str, dtype: torch.dtype) -> SolverSpec:
    """The solver ``find_mask`` runs for this request (``backend="auto"``: the best one that can run).

    Raises:
        ConfigError: unknown method or backend name.
        BackendUnavailableError: the method has no solver that can run this request (pattern kind, m, device,
            dtype, availability), or the explicit backend cannot; the message lists what can.
    """
    specs = list_solvers(method)
    if not specs:
        raise ConfigError(f"find_mask: unknown method {method!r}; choose one of {list_methods()}")
    request = f"{method} {pattern} on {device} ({str(dtype).removeprefix('torch.')})"
    reasons = {spec.backend: spec.why_not(pattern, device, dtype) for spec in specs}
    runnable = [spec for spec in specs if reasons[spec.backend] is None]
    choices = ", ".join(repr(s.backend) for s in runnable) or "none"
    if backend == "auto":
        if not runnable:
            detail = "; ".join(f"{b}: {r}" for b, r in reasons.items())
            raise BackendUnavailableError(
                f"find_mask: no backend can run {request} ({detail}); pick another method (registered: {_labels()})"
            )
        return max(runnable, key=lambda s: s.priority)  # max keeps the first of equal priorities
    if not isinstance(backend, str):
        raise ConfigError(f"find_mask: backend must be a string, got {backend!r}")
    if backend not in reasons:
        known = sorted({spec.backend for spec in _SOLVERS.values()})
        if backend not in known:
            raise ConfigError(f"find_mask: unknown backend {backend!r}; choose 'auto' or one of {known}")
        raise BackendUnavailableError(
            f"find_mask: method {method!r} has no {backend!r} backend; backends that can run {request}: "
            f"{choices} (or backend='auto')"
        )
    why = reasons[backend]
    if why is not None:
        raise BackendUnavailableError(
            f"find_mask: backend {backend!r} cannot run {request} ({method}/{backend}: {why}); backends "
            f"that can: {choices} (or backend='auto')"
        )
    return next(spec for spec in specs if spec.backend == backend)


def normalize_method(method: object, pattern: NMPattern, *, where: str = "find_mask") -> str:
    """The registered method that runs ``method`` on ``pattern``: ``"auto"`` is ``"exact"`` for transposable
    patterns and ``"topn"`` for plain ones, and a method without a plain solver runs ``"topn"`` on plain patterns
    (every built-in rule reduces to per-group top-n when only groups are constrained).

    Raises:
        ConfigError: not a string, an unknown method, or ``"topn"`` with a transposable pattern.
    """
    if not isinstance(method, str):
        raise ConfigError(f"{where}: method must be a string, one of {list_methods()}; got {method!r}")
    if method == "auto":
        method = "exact" if pattern.transposable else "topn"
    if method not in list_methods():
        raise ConfigError(f"{where}: unknown method {method!r}; choose one of {list_methods()}")
    if method == "topn" and pattern.transposable:
        raise ConfigError(
            f"{where}: method 'topn' does not make transposable masks (pattern {pattern}); use 'exact', "
            f"'greedy' or 'greedy-repair', or the plain pattern '{pattern.n}:{pattern.m}'"
        )
    if not pattern.transposable and not any(spec.plain for spec in list_solvers(method)):
        method = "topn"
    return method


@dataclass(frozen=True)
class ResolvedSolver:
    """One registered solver chosen for one request, validated once; calling it checks nothing.

    ``solver(scores)`` runs ``spec.fn(scores, pattern, progress)`` directly. The caller guarantees what
    :func:`nmsparse.find_mask` would otherwise check: ``scores`` is a contiguous ``[rows, K]`` matrix of
    :attr:`dtype` on the resolved device, finite, with ``K`` (and ``rows`` for transposable patterns) a multiple of
    ``m``. The result is the solver's mask (``torch.bool [rows, K]``), not re-checked.
    """

    spec: SolverSpec
    pattern: NMPattern
    dtype: torch.dtype

    def __call__(self, scores: torch.Tensor, progress: bool | None = False) -> torch.Tensor:
        return self.spec.fn(scores, self.pattern, progress)


def resolve(
    method: str,
    pattern: NMPattern | str,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    *,
    backend: str = "auto",
) -> ResolvedSolver:
    """Validate a request once and return its solver as a plain callable ``scores [rows, K] -> mask``.

    For inner loops that solve many matrices of one layer (e.g. SparseGPT, once per block of columns for all
    rows): the method, backend, pattern, device and dtype are checked here, the per-call input checks of
    :func:`nmsparse.find_mask` are skipped (see :class:`ResolvedSolver` for what the caller guarantees).

    Args:
        method: as in ``find_mask`` (``"auto"``, ``"topn"``, ``"exact"``, ...).
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        device: where the scores live.
        dtype: dtype of the scores; the solver gets :attr:`ResolvedSolver.dtype` (fp16/bf16 widen to float32
            for solvers that declare only float32/float64).
        backend: ``"auto"`` or a registered backend name.

    Raises:
        ConfigError, BackendUnavailableError: as :func:`nmsparse.find_mask`.

    Example:
        >>> import torch
        >>> solve = resolve("auto", "2:4", "cpu")
        >>> solve(torch.tensor([[0.1, -0.9, 0.3, 0.4]]).abs()).int().tolist()
        [[0, 1, 0, 1]]
    """
    pattern = NMPattern.parse(pattern)
    method = normalize_method(method, pattern, where="resolve")
    if not isinstance(backend, str):
        raise ConfigError(f"resolve: backend must be a string, got {backend!r}")
    spec = select_solver(method, backend, pattern, torch.device(device).type, dtype)
    score_dtype = spec.score_dtype(dtype)
    assert score_dtype is not None  # select_solver checked it
    return ResolvedSolver(spec, pattern, score_dtype)


def numba_available() -> bool:
    """Whether numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None
