"""Recipe layer: training recipes, data readers, built-in models, DDP plumbing, plots, the MiniLM / Hugging Face
bridges, shipped YAML recipes and demo fixtures.

Nothing here is part of the library's API promise (compare torchao's ``prototype/``): names and behaviour may
change between releases. The library proper (``nmsparse.*`` outside ``recipes`` and ``cli``) never imports from
this package.
"""
