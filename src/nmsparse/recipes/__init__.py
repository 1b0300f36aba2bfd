"""Recipe layer: training recipes, data readers, built-in models, DDP plumbing, plots, the MiniLM / Hugging Face
bridges, shipped YAML recipes and demo fixtures.

The two training tasks, :mod:`.classify` (images) and :mod:`.lm` (a decoder language model), share one run loop:
:mod:`._run` (device, seeds, learning-rate schedules, ``--accelerate``, results and summaries, comparisons),
:mod:`.rundir` (run directories, atomic checkpoints, resume), :mod:`.distributed` (``torchrun`` process groups),
:mod:`.unstructured` (50% magnitude masks), :mod:`.plots` and :mod:`._common` (structure names, YAML files).

Nothing here is part of the library's API promise (compare torchao's ``prototype/``): names and behaviour may
change between releases. The library proper (``nmsparse.*`` outside ``recipes`` and ``cli``) never imports from
this package.
"""
