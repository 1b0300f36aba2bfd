"""PLACEHOLDER: mask diversity (being written)."""


def mask_diversity(pattern, numel, *, density=None):  # type: ignore[no-untyped-def]
    raise NotImplementedError
