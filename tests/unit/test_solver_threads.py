"""Issue 16, first call: serial nogil kernels on slices of the blocks give the same masks as one call, and a
greedy call made while its kernel compiles gives the kernel's mask (the bit-equal torch version)."""

from __future__ import annotations

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
    assert torch.equal(exact.flow_blocks(blocks, 4, compiled=False)[:50], reference[:50])


def test_greedy_blocks_cpu_while_compiling_equals_the_kernel(monkeypatch):
    from nmsparse.solvers import greedy_cpu
    from nmsparse.solvers.greedy import greedy_blocks

    torch.manual_seed(1)
    blocks = torch.randn(700, 8, 8, dtype=torch.float64)
    monkeypatch.setattr(greedy_cpu, "_BUILDS", {})  # as in a fresh process: the first call starts the compile
    first = greedy_cpu.greedy_blocks_cpu(blocks, 4)
    greedy_cpu.wait_compiled()
    assert not any(build.is_alive() for build in greedy_cpu._BUILDS.values())
    assert torch.equal(first, greedy_blocks(blocks, 4))
    assert torch.equal(greedy_cpu.greedy_blocks_cpu(blocks, 4), first)
