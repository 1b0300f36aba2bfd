"""Issue 16, first call: serial nogil kernels on slices of the blocks give the same masks as one call, and a
call made before its kernel is compiled gives the kernel's mask (greedy: the torch version; exact: the kernel's
numpy twin), then compiles the kernel in the background."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_flow_blocks_split_over_threads_equals_one_call(monkeypatch, threads):
    from nmsparse.solvers import _threads, exact

    torch.manual_seed(0)
    blocks = torch.randn(1500, 8, 8)
    reference = exact.flow_blocks(blocks, 4)
    monkeypatch.setattr(_threads, "solver_threads", lambda: threads)
    assert torch.equal(exact.flow_blocks(blocks, 4), reference)
    assert torch.equal(exact.flow_blocks(blocks[:50], 4, compiled=False), reference[:50])  # the torch path


def test_greedy_blocks_cpu_while_compiling_equals_the_kernel(monkeypatch):
    from nmsparse.solvers import _threads, greedy_cpu
    from nmsparse.solvers.greedy import greedy_blocks

    torch.manual_seed(1)
    blocks = torch.randn(700, 8, 8, dtype=torch.float64)
    monkeypatch.setattr(_threads, "_BUILDS", {})  # as in a fresh process: the first call starts the compile
    first = greedy_cpu.greedy_blocks_cpu(blocks, 4)
    assert "greedy-float64" in _threads._BUILDS
    _threads.wait_builds()
    assert _threads.build_done("greedy-float64")
    assert torch.equal(first, greedy_blocks(blocks, 4))
    assert torch.equal(greedy_cpu.greedy_blocks_cpu(blocks, 4), first)


def _tricky_blocks(kind: int, count: int, m: int, rng: np.random.Generator) -> np.ndarray:
    shape = (count, m, m)
    if kind == 0:
        return rng.standard_normal(shape)
    if kind == 1:  # many exact ties
        return rng.integers(0, 3, shape).astype(np.float64)
    if kind == 2:  # subnormal scores
        return rng.random(shape) * 1e-310
    if kind == 3:  # scales from 1e-30 to 1e30 in one block
        return rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)
    if kind == 4:  # near overflow
        return rng.random(shape) * 1.7e308
    blocks = np.ones(shape)  # all equal, and all zero
    blocks[: count // 2] = 0.0
    return blocks


@pytest.mark.parametrize(
    ("m", "ns", "count"), [(8, range(1, 8), 120), (16, (1, 5, 8, 11, 15), 40), (5, (2, 3), 60), (32, (4, 16, 29), 8)]
)
def test_flow_numpy_twin_equals_the_kernel_bit_for_bit(m, ns, count):
    from nmsparse.solvers import exact

    kernel = exact.flow_kernel()
    rng = np.random.default_rng(m)
    for n in ns:
        for kind in range(6):
            blocks = _tricky_blocks(kind, count, m, rng)
            expected = np.zeros(blocks.shape, dtype=np.bool_)
            twin = np.zeros(blocks.shape, dtype=np.bool_)
            kernel(blocks, n, False, expected)
            exact._flow_blocks_np(blocks, n, twin)
            assert np.array_equal(twin, expected), f"m={m}, n={n}, kind={kind}"


def test_exact_first_call_answers_with_the_twin_then_compiles(monkeypatch):
    from nmsparse.solvers import _threads, exact

    torch.manual_seed(2)
    blocks = torch.randn(900, 8, 8)
    reference = exact.flow_blocks(blocks, 4)
    relaxed = exact.flow_blocks(blocks, 3, at_most=True)
    monkeypatch.setattr(exact, "_KERNEL", None)  # as in a fresh process
    monkeypatch.setattr(exact, "_KERNEL8", None)
    monkeypatch.setattr(_threads, "_BUILDS", {})
    calls = []
    twin = exact._flow_blocks_np
    monkeypatch.setattr(exact, "_flow_blocks_np", lambda *args: calls.append(1) or twin(*args))
    try:
        first = exact.flow_blocks(blocks, 4)
        # answered by the twin, then the compile of the m = 8 kernel (only that one) started
        assert calls == [1] and list(_threads._BUILDS) == ["exact-m8"]
    finally:
        _threads.wait_builds()
    assert exact._KERNEL8 is not None and exact._KERNEL is None
    assert torch.equal(first, reference)
    assert torch.equal(exact.flow_blocks(blocks, 4), reference) and calls == [1]  # now the kernel
    assert torch.equal(exact.flow_blocks(blocks, 3, at_most=True), relaxed)  # the general kernel, built here
    assert exact._KERNEL is not None
    blocks16 = torch.randn(40, 16, 16)
    reference16 = exact.flow_blocks(blocks16, 8)
    monkeypatch.setattr(exact, "_KERNEL", None)
    try:
        assert torch.equal(exact.flow_blocks(blocks16, 8), reference16) and calls == [1, 1]  # m = 16: the twin
        assert "exact" in _threads._BUILDS
    finally:
        _threads.wait_builds()
    assert exact._KERNEL is not None


def test_exact_big_first_call_and_at_most_wait_for_the_kernel(monkeypatch):
    from nmsparse.solvers import _threads, exact

    torch.manual_seed(3)
    blocks = torch.randn(300, 8, 8)
    reference = exact.flow_blocks(blocks, 4)
    relaxed = exact.flow_blocks(blocks, 4, at_most=True)
    monkeypatch.setattr(exact, "_KERNEL", None)
    monkeypatch.setattr(exact, "_KERNEL8", None)
    monkeypatch.setattr(_threads, "_BUILDS", {})
    monkeypatch.setattr(exact, "_TWIN_WORK", 299 * 8**3)  # 300 blocks are too many for the twin

    def no_twin(*args):
        raise AssertionError("the twin answered a call it should not")

    monkeypatch.setattr(exact, "_flow_blocks_np", no_twin)
    assert torch.equal(exact.flow_blocks(blocks, 4, at_most=True), relaxed)
    monkeypatch.setattr(exact, "_KERNEL", None)
    assert exact._KERNEL8 is None  # at_most ran the general kernel
    assert torch.equal(exact.flow_blocks(blocks, 4), reference)
    assert exact._KERNEL8 is not None
    assert _threads._BUILDS == {}  # compiled in the caller's thread, nothing in the background


def test_a_solve_leaves_torch_thread_count_alone() -> None:
    """Regression: reading numba's thread count launched its OpenMP layer, which reset torch's thread count."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1); import nmsparse; "
        "nmsparse.find_mask(torch.randn(64, 64), '4:8-T', method='exact'); print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "1"
