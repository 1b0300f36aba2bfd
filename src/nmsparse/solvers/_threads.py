"""Serial ``nogil`` numba kernels run over contiguous slices of a batch of blocks on a small thread pool.

A ``parallel=True`` numba kernel costs seconds to compile (the parfor passes), which every fresh machine paid on
its first mask (issue 16: 4.5 s for the first 4:8-T mask on a 2-core machine). The same loop compiled serially
with ``nogil=True`` compiles about three times faster, and slices of the batch solved on Python threads run in
parallel all the same, since the compiled code releases the GIL. Threads: numba's thread count
(``NUMBA_NUM_THREADS``, or ``numba.set_num_threads``, which ``nmsparse`` commands set from ``--threads``).

Background builds (:func:`start_build`): a first call answers with a bit-equal twin (exact: the numpy twin of the
flow kernel; greedy: the torch version) and only then starts the compile, so the twin does not share the
interpreter lock with numba's compiler; :func:`wait_builds` waits for them (``warmup`` does).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["run_split", "solver_threads", "build_done", "start_build", "wait_builds"]

#: Default fewest blocks worth a slice of their own (below this one thread does all the work).
MIN_BLOCKS_PER_THREAD = 256
#: Slices per thread: taken in turn, they balance threads that other processes slow down.
SLICES_PER_THREAD = 4

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_PID = 0  # a forked child inherits the pool object but not its threads: it builds its own
_LOCK = threading.Lock()
#: name -> the thread compiling (or loading from numba's cache) a kernel; the build is done once its thread is.
_BUILDS: dict[str, threading.Thread] = {}


def solver_threads() -> int:
    """numba's thread count (1 without numba).

    Read without starting numba's threading layer: ``numba.get_num_threads()`` launches it, and launching the
    OpenMP layer resets torch's intra-op thread count (a ``torch.set_num_threads(1)`` caller would find 2 after
    its first solve). The kernels here are serial and ``nogil``; they never need that layer.
    """
    try:
        import numba
        from numba.np.ufunc import parallel
    except ImportError:
        return 1
    if getattr(parallel, "_is_initialized", False):  # launched by someone else: honour numba.set_num_threads
        return max(1, int(numba.get_num_threads()))
    return max(1, int(getattr(numba.config, "NUMBA_NUM_THREADS", 1)))


def _pool(size: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE, _POOL_PID
    with _LOCK:
        if _POOL is None or _POOL_SIZE < size or _POOL_PID != os.getpid():
            if _POOL is not None and _POOL_PID == os.getpid():
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=size, thread_name_prefix="nmsparse-solver")
            _POOL_SIZE, _POOL_PID = size, os.getpid()
        return _POOL


def run_split(
    solve: Callable[[int, int], None],
    nblocks: int,
    *,
    threads: int | None = None,
    min_blocks: int = MIN_BLOCKS_PER_THREAD,
) -> None:
    """Call ``solve(start, stop)`` on contiguous slices covering ``range(nblocks)`` from up to ``threads`` threads.

    ``solve`` must release the GIL (a ``nogil`` numba kernel on slices of the batch) and write disjoint outputs.
    There are a few slices per thread, taken in turn by whichever thread is free, so a thread slowed down by
    other work on the machine does not hold up the rest; ``min_blocks`` is the fewest blocks worth a slice (a
    slice should hold at least ~0.1 ms of work). Exceptions of any slice are raised here.
    """
    count = solver_threads() if threads is None else max(1, int(threads))
    min_blocks = max(1, int(min_blocks))
    workers = max(1, min(count, nblocks // min_blocks))
    if workers == 1:
        solve(0, nblocks)
        return
    parts = min(workers * SLICES_PER_THREAD, max(1, nblocks // min_blocks))
    bounds = [(i * nblocks // parts, (i + 1) * nblocks // parts) for i in range(parts)]
    taken = iter(range(parts))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            solve(*bounds[index])

    futures = [_pool(workers - 1).submit(work) for _ in range(workers - 1)]
    try:
        work()  # this thread works too
    finally:
        for future in futures:
            future.result()


def build_done(name: str) -> bool:
    """Whether the background build ``name`` was started and has ended."""
    thread = _BUILDS.get(name)
    return thread is not None and not thread.is_alive()


def start_build(name: str, build: Callable[[], object]) -> None:
    """Start ``build()`` on a background thread, unless the build ``name`` was started before.

    A first mask never waits for numba's compiler (issue 16): its caller answers with a bit-equal twin
    meanwhile. Exceptions of ``build`` are dropped here; the caller's next synchronous use raises them. The thread
    is not a daemon: the interpreter waits for the compile at exit (its result lands in numba's on-disk cache,
    and LLVM is not torn down under a running compile).
    """
    with _LOCK:
        thread = _BUILDS.get(name)
        if thread is None:

            def run() -> None:
                try:
                    build()
                except Exception:  # noqa: BLE001, S110 - raised again by the caller's synchronous build
                    pass

            thread = threading.Thread(target=run, name=f"nmsparse-build-{name}")
            _BUILDS[name] = thread
            thread.start()


def wait_builds() -> None:
    """Wait for every background build started so far (what :func:`nmsparse.solvers.warmup` needs)."""
    for thread in list(_BUILDS.values()):
        thread.join()
