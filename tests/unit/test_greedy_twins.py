"""The compiled CPU greedy kernel and the vectorised torch greedy are twins: masks bit-equal."""

import pytest
import torch

from nmsparse.solvers.greedy import greedy_blocks, repair_blocks
from nmsparse.solvers.greedy_cpu import greedy_blocks_cpu


@pytest.mark.parametrize("m, n", [(4, 1), (4, 2), (4, 3), (8, 2), (8, 4), (8, 6), (16, 8), (32, 16)])
@pytest.mark.parametrize("kind", ["gaussian", "ties", "zeros"])
def test_compiled_greedy_equals_torch_greedy(m, n, kind):
    torch.manual_seed(m * 10 + n)
    blocks = torch.randn(300 if m < 32 else 20, m, m)
    if kind == "ties":
        blocks = blocks.round()
    elif kind == "zeros":
        blocks = blocks * (torch.rand_like(blocks) < 0.1)
    blocks = blocks.abs()
    assert torch.equal(greedy_blocks_cpu(blocks, n), greedy_blocks(blocks, n))
    assert torch.equal(greedy_blocks_cpu(blocks.double(), n), greedy_blocks(blocks, n))


@pytest.mark.parametrize("m, n", [(4, 2), (8, 4), (8, 3), (16, 8)])
def test_repair_reaches_exactly_n_and_only_adds_value(m, n):
    torch.manual_seed(m + n)
    blocks = torch.rand(500, m, m)
    greedy = greedy_blocks(blocks, n)
    repaired = repair_blocks(blocks, greedy, n)
    assert (repaired.sum(1) == n).all() and (repaired.sum(2) == n).all()
    # blocks that greedy already filled are left alone
    short = (greedy.sum(2) < n).any(1)
    assert short.any(), "the test needs some greedy blocks with short rows"
    unchanged = ~short
    assert torch.equal(repaired[unchanged], greedy[unchanged])


def test_solvers_package_has_no_import_cycle():
    # Regression (issue 7): greedy.py and greedy_cpu.py imported each other (lazily, inside functions).
    # Every import of a sibling module, at any depth of the file, counts.
    import ast
    from pathlib import Path

    import nmsparse.solvers as package

    folder = Path(package.__file__).parent
    graph: dict[str, set[str]] = {}
    modules = {path.stem for path in folder.glob("*.py")}
    for path in folder.glob("*.py"):
        edges = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [alias.name for alias in node.names]
                edges.update(t.split(".")[0] for t in targets if t and t.split(".")[0] in modules)
    graph.pop("__init__", None)  # the package imports its modules; they may import the package lazily

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, {name})]
    assert not cycles, f"import cycle through {cycles}: {graph}"
