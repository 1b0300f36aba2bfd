"""Importing nmsparse is lean: no CUDA context, no optional heavy dependency beyond what torch loads itself."""

import subprocess
import sys


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
