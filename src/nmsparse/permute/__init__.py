"""Channel permutations for n:m and transposable n:m masks.

:func:`permute_` reorders a model's free channels (found from its structure, :mod:`.graph`) so the pattern's
optimal masks keep more saliency, leaving the model's function unchanged; :mod:`.search` holds the permutation
search for one score matrix, and the published stripe-group baseline.
"""

from __future__ import annotations

from .graph import Chain, Member, find_chains
from .permute import ChainReport, LayerGain, PermuteReport, compute_scores, permute_, plan_permutations
from .search import PermutationSearch, permute_columns, retained, search_permutation, stripe_group_search

__all__ = [
    "permute_",
    "PermuteReport",
    "ChainReport",
    "LayerGain",
    "plan_permutations",
    "compute_scores",
    "find_chains",
    "Chain",
    "Member",
    "PermutationSearch",
    "search_permutation",
    "permute_columns",
    "retained",
    "stripe_group_search",
]
