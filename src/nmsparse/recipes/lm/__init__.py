"""Language-model recipe: a GPT-style decoder trained dense and n:m / n:m-T sparse on text shipped with Python.

No API promise (recipe layer). The three names below are what ``nmsparse train lm`` and ``nmsparse compare lm``
call; the pieces live in the submodules (the run loop it shares with the classify recipe is
:mod:`nmsparse.recipes._run`):

* :mod:`.corpus` (the embedded documentation, its hash and held-out split), :mod:`.tokenizer` (bytes),
  :mod:`.text` (``--data`` files and a model folder's ``tokenizer.json``), :mod:`.data` (token streams and
  batches);
* :mod:`.pretrained` (``--model hf:FOLDER``: a transformers causal LM, its masks, its export);
* :mod:`.model` (``GPT``, ``GPTConfig``; ``to_hf_gpt2`` / ``save_hf`` export to a ``transformers`` GPT-2 folder);
* :mod:`.config` (``LMTrainConfig``), :mod:`.task` (the training loop, ``run_lm_training``), :mod:`.compare`
  (``compare_lm``), :mod:`.parallel` (FSDP2 / DDP under ``torchrun``).
"""

from __future__ import annotations

from .compare import compare_lm
from .config import LMTrainConfig
from .task import run_lm_training

__all__ = ["LMTrainConfig", "run_lm_training", "compare_lm"]
