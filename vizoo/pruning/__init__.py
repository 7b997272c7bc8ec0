"""Pruned ViTs: block-structured pruning with compaction, token merging/pruning, save and reload.

See :mod:`vizoo.pruning.block` (LPViT-style pruning, :func:`compact`), :mod:`vizoo.pruning.tokens` (ToMe, EViT),
:mod:`vizoo.pruning.ssm_tokens` (Vim token pruning with hidden-state alignment), :mod:`vizoo.pruning.io`
(:func:`save_pruned`, :func:`load_pruned`) and :mod:`vizoo.pruning.latency`.
"""

from .block import BlockMask, block_prune, compact, finetune, fisher_importance, sparsity_of, to_block_sparse
from .cli import add_prune_parser, run_prune
from .io import is_saved_pruned, load_pruned, save_pruned
from .latency import LatencyModel
from .ssm_tokens import apply_vim_token_pruning, remove_vim_token_pruning
from .tokens import apply_evit, apply_tome, bipartite_merge, remove_token_reduction

__all__ = [
    "BlockMask",
    "LatencyModel",
    "add_prune_parser",
    "apply_evit",
    "apply_tome",
    "apply_vim_token_pruning",
    "bipartite_merge",
    "block_prune",
    "compact",
    "finetune",
    "fisher_importance",
    "is_saved_pruned",
    "load_pruned",
    "remove_token_reduction",
    "remove_vim_token_pruning",
    "run_prune",
    "save_pruned",
    "sparsity_of",
    "to_block_sparse",
]
