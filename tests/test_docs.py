"""Every docstring example in the package runs (doctest), so the documentation cannot go stale."""

import doctest
import importlib
import pkgutil

import pytest

import nmsparse

MODULES = sorted(m.name for m in pkgutil.walk_packages(nmsparse.__path__, "nmsparse.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional dependency of that module is missing here
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
