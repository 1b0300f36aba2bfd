"""Importing nmsparse is lean: no CUDA context, no optional heavy dependency beyond what torch loads itself."""

import subprocess
import sys

import pytest


def test_import_is_lean():
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import nmsparse\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "heavy = sorted(new & {'triton', 'matplotlib', 'transformers', 'scipy', 'networkx', 'yaml', 'tqdm',"
        " 'sklearn', 'safetensors'})\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.slow
def test_every_module_imports_first():
    """Each module can be the first nmsparse module a program imports (catches import cycles between packages)."""
    code = (
        "import importlib, pkgutil, sys, torch, nmsparse\n"
        "names = sorted(m.name for m in pkgutil.walk_packages(nmsparse.__path__, 'nmsparse.')\n"
        "               if not m.name.endswith('__main__'))\n"
        "failed = []\n"
        "for name in names:\n"
        "    for key in [k for k in sys.modules if k == 'nmsparse' or k.startswith('nmsparse.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        if 'circular' in str(exc) or 'partially initialized' in str(exc):\n"
        "            failed.append(f'{name}: {exc}')\n"
        "assert not failed, failed\n"
        "print('ok', len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr[-3000:]
