"""A GPT-2-style decoder whose module names map one to one onto ``transformers``' ``GPT2LMHeadModel``.

Architecture (nanoGPT's, which is GPT-2's): token + learned position embeddings, ``n_layer`` pre-norm blocks
(``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``) with causal self-attention through
:func:`torch.nn.functional.scaled_dot_product_attention` and a GELU (tanh) MLP of width ``4 * d_model``, a final
LayerNorm and a linear head. Every linear layer of the blocks is an :class:`torch.nn.Linear` (the layers
:class:`nmsparse.DynamicSparsifier` makes sparse); the embeddings and the head stay dense by default
(:data:`SPARSE_LAYERS` is the include glob for them).

Module names (``B`` batch, ``T`` time, ``C`` = ``d_model``)::

    transformer.wte            Embedding(vocab, C)
    transformer.wpe            Embedding(context, C)
    transformer.h.{i}.ln_1     LayerNorm(C)
    transformer.h.{i}.attn.c_attn   Linear(C, 3C)   fused q, k, v
    transformer.h.{i}.attn.c_proj   Linear(C, C)
    transformer.h.{i}.ln_2     LayerNorm(C)
    transformer.h.{i}.mlp.c_fc      Linear(C, 4C)
    transformer.h.{i}.mlp.c_proj    Linear(4C, C)
    transformer.ln_f           LayerNorm(C)
    lm_head                    Linear(C, vocab, bias=False)  (tied to wte when tie_embeddings)

These are GPT-2's names, so :func:`to_hf_gpt2` copies each tensor under the same key; only the four block
linears are transposed, because GPT-2's ``Conv1D`` stores its weight as ``[in, out]`` where ``nn.Linear`` stores
``[out, in]``. A masked (pruned) model exports its masked weights, i.e. dense tensors with the zeros baked in.

API:
    :class:`GPTConfig` (sizes), :class:`GPT` (``model(idx) -> logits``), :func:`to_hf_gpt2` (a
    ``transformers.GPT2LMHeadModel`` with identical logits), :func:`from_hf_gpt2` (back), :func:`save_hf` /
    :func:`load_hf` (a normal ``transformers`` folder: ``config.json`` + ``model.safetensors``, which
    ``AutoModelForCausalLM.from_pretrained`` loads). ``transformers`` is needed only by the HF functions.

Example:
    >>> import torch
    >>> model = GPT(GPTConfig(vocab_size=256, context=16, d_model=32, n_layer=2, n_head=2))
    >>> model(torch.randint(0, 256, (3, 16))).shape  # (B, T, vocab)
    torch.Size([3, 16, 256])
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nmsparse.config import ConfigBase, Interval, config_field
from nmsparse.errors import ConfigError, InputError, ShapeError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import GPT2LMHeadModel

__all__ = ["GPTConfig", "GPT", "SPARSE_LAYERS", "HF_LINEARS", "to_hf_gpt2", "from_hf_gpt2", "save_hf", "load_hf"]

#: Include glob (:func:`nmsparse.select_layers`) of the layers a sparse run masks: every linear of the blocks.
SPARSE_LAYERS = ("transformer.h.*",)
#: Suffixes of the block linears (transposed on export: GPT-2's Conv1D stores ``[in, out]``).
HF_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@dataclass(frozen=True, kw_only=True)
class GPTConfig(ConfigBase):
    """Sizes of the decoder.

    Example:
        >>> GPTConfig(d_model=64, n_head=4).head_dim
        16
    """

    vocab_size: int = config_field(256, help="vocabulary size (256 for the byte tokenizer)")
    context: int = config_field(128, help="longest sequence (learned position embeddings)")
    d_model: int = config_field(128, help="width of the residual stream")
    n_layer: int = config_field(4, help="decoder blocks")
    n_head: int = config_field(4, help="attention heads (d_model must be a multiple)")
    mlp_ratio: int = config_field(4, help="MLP width / d_model")
    dropout: float = config_field(0.0, help="dropout on embeddings, attention and residual branches")
    bias: bool = config_field(True, help="biases in linears and LayerNorms (GPT-2 has them)")
    tie_embeddings: bool = config_field(False, help="share the head's weight with the token embedding")
    layer_norm_eps: float = config_field(1e-5, help="LayerNorm epsilon (GPT-2: 1e-5)")

    _constraints = {
        "vocab_size": [Interval(int, 1, None)],
        "context": [Interval(int, 1, None)],
        "d_model": [Interval(int, 1, None)],
        "n_layer": [Interval(int, 1, None)],
        "n_head": [Interval(int, 1, None)],
        "mlp_ratio": [Interval(int, 1, None)],
        "dropout": [Interval(float, 0, 1, closed="left")],
        "bias": [bool],
        "tie_embeddings": [bool],
        "layer_norm_eps": [Interval(float, 0, None, closed="neither")],
    }

    def _check(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(
                f"GPTConfig: d_model ({self.d_model}) must be a multiple of n_head ({self.n_head}); "
                f"e.g. d_model={self.n_head * max(1, round(self.d_model / self.n_head))}"
            )

    @property
    def head_dim(self) -> int:
        """``d_model // n_head``."""
        return self.d_model // self.n_head


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused q/k/v projection (GPT-2's ``c_attn``)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """``c_fc`` (C -> ratio*C), GELU (tanh approximation, GPT-2's ``gelu_new``), ``c_proj`` (ratio*C -> C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, config.mlp_ratio * config.d_model, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_ratio * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Embeddings, blocks and final LayerNorm (GPT-2's ``transformer`` module: ``wte``, ``wpe``, ``h``, ``ln_f``)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.context, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)


class GPT(nn.Module):
    """Decoder-only language model; ``forward(idx)`` returns logits ``(B, T, vocab)``.

    Weights are initialised as in GPT-2 / nanoGPT: normal(0, 0.02), residual output projections scaled by
    ``1 / sqrt(2 * n_layer)``, zero biases.

    Args:
        config: sizes.

    Example:
        >>> model = GPT(GPTConfig(context=8, d_model=16, n_layer=1, n_head=2))
        >>> sorted(name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))[:2]
        ['lm_head', 'transformer.h.0.attn.c_attn']
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, *, embeddings: bool = True) -> int:
        """Parameter count (shared tensors once); ``embeddings=False`` leaves out ``wte``/``wpe``/an untied head."""
        seen: set[int] = set()
        total = 0
        skip = set()
        if not embeddings:
            skip = {id(self.transformer.wte.weight), id(self.transformer.wpe.weight), id(self.lm_head.weight)}
        for param in self.parameters():
            if id(param) in seen or id(param) in skip:
                continue
            seen.add(id(param))
            total += param.numel()
        return total

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.config.context:
            raise ShapeError(
                f"GPT: sequence of length {T} is longer than the context {self.config.context}; "
                f"crop it or build the model with a larger context"
            )
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)


def _hf_config(config: GPTConfig, extra: dict[str, Any] | None = None) -> Any:
    from transformers import GPT2Config

    hf = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context,
        n_embd=config.d_model,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.mlp_ratio * config.d_model,
        activation_function="gelu_new",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf.architectures = ["GPT2LMHeadModel"]
    if extra:
        hf.nmsparse = extra
    return hf


@torch.no_grad()
def _hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """GPT-2 keys -> tensors; a masked linear gives ``W * mask`` (its ``.weight``), block linears transposed."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            weight = module.weight.detach().clone()  # a parametrized module returns the masked weight
            if isinstance(module, nn.Linear) and name.endswith(HF_LINEARS):
                weight = weight.t().contiguous()
            out[f"{name}.weight"] = weight
            bias = getattr(module, "bias", None)
            if name.endswith(HF_LINEARS) or isinstance(module, nn.LayerNorm):
                # GPT-2's Conv1D and LayerNorm always have a bias: zeros stand in for a model built without.
                out[f"{name}.bias"] = (
                    bias.detach().clone()
                    if bias is not None
                    else torch.zeros(
                        weight.shape[-1] if isinstance(module, nn.Linear) else weight.shape[0], dtype=weight.dtype
                    )
                )
    return out


def _check_gpt(model: object, where: str) -> GPT:
    if not isinstance(model, GPT):
        raise InputError(f"{where}: expected a nmsparse.recipes.lm.GPT, got {type(model).__name__}")
    return model


def to_hf_gpt2(model: GPT, *, metadata: dict[str, Any] | None = None) -> GPT2LMHeadModel:
    """A ``transformers.GPT2LMHeadModel`` with this model's weights (masked weights with their zeros).

    Its logits equal this model's up to float rounding (eval mode; same inputs).

    Args:
        model: a :class:`GPT` (dense or with mask parametrizations on its linears).
        metadata: JSON-ready dict stored as ``config.nmsparse`` (e.g. corpus hash, tokenizer, pattern).

    Returns:
        The HF model on the CPU, in eval mode, float32.

    Raises:
        InputError: ``model`` is not a :class:`GPT`.

    Example:
        >>> model = GPT(GPTConfig(context=8, d_model=16, n_layer=1, n_head=2)).eval()
        >>> idx = torch.randint(0, 256, (2, 8))
        >>> hf = to_hf_gpt2(model)
        >>> torch.allclose(hf(idx).logits, model(idx), atol=1e-5)
        True
    """
    from transformers import GPT2LMHeadModel

    model = _check_gpt(model, "to_hf_gpt2")
    hf = GPT2LMHeadModel(_hf_config(model.config, metadata))
    state = {k: v.float().cpu() for k, v in _hf_state_dict(model).items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # GPT-2 may keep non-persistent buffers (attention bias masks); only real weights must be accounted for.
    real_missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    if real_missing or unexpected:
        raise InputError(f"to_hf_gpt2: key mismatch, missing in the export {real_missing}, not in GPT-2 {unexpected}")
    return hf.eval()


def from_hf_gpt2(hf_model: Any) -> GPT:
    """The :class:`GPT` of a ``GPT2LMHeadModel`` (inverse of :func:`to_hf_gpt2`; GELU must be ``gelu_new``).

    Raises:
        InputError: not a GPT-2 model, or a GPT-2 variant this decoder does not reproduce.
    """
    hf_config: Any = getattr(hf_model, "config", None)
    if getattr(hf_config, "model_type", None) != "gpt2":
        raise InputError(f"from_hf_gpt2: expected a transformers GPT-2 model, got {type(hf_model).__name__}")
    if (
        hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh")
        or getattr(hf_config, "scale_attn_by_inverse_layer_idx", False)
        or getattr(hf_config, "reorder_and_upcast_attn", False)
        or not getattr(hf_config, "scale_attn_weights", True)
    ):
        raise InputError(
            "from_hf_gpt2: this GPT-2 uses options the decoder does not reproduce (activation "
            f"{hf_config.activation_function!r}, attention scaling variants); only standard GPT-2 "
            f"converts"
        )
    inner = hf_config.n_inner or 4 * hf_config.n_embd
    if inner % hf_config.n_embd:
        raise InputError(f"from_hf_gpt2: MLP width {inner} is not a multiple of n_embd {hf_config.n_embd}")
    config = GPTConfig(
        vocab_size=hf_config.vocab_size,
        context=hf_config.n_positions,
        d_model=hf_config.n_embd,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        mlp_ratio=inner // hf_config.n_embd,
        dropout=0.0,
        bias=True,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        layer_norm_eps=float(hf_config.layer_norm_epsilon),
    )
    model = GPT(config)
    source = {k: v for k, v in hf_model.state_dict().items()}
    state = {}
    for key, param in model.state_dict().items():
        if key not in source:
            raise InputError(f"from_hf_gpt2: GPT-2 state dict lacks {key!r}")
        value = source[key]
        if key.endswith(tuple(f"{s}.weight" for s in HF_LINEARS)):
            value = value.t()
        state[key] = value.detach().to(param.dtype)
    model.load_state_dict(state)
    return model.eval()


def save_hf(
    model: GPT, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write ``model`` as a ``transformers`` GPT-2 folder (``config.json``, ``model.safetensors``).

    Written by :func:`nmsparse.io.save_pretrained_dense`, nmsparse's one writer of ``transformers`` folders: beside
    ``path`` and renamed into place, so a crash leaves no half folder.

    Args:
        model: a :class:`GPT` (masked weights are exported with their zeros).
        path: the folder to create.
        metadata: JSON-ready dict stored in ``config.json`` under ``"nmsparse"``.
        overwrite: replace an existing ``path``; otherwise an existing non-empty folder raises.

    Returns:
        ``path``.

    Raises:
        OverwriteError: ``path`` exists (not an empty folder) and ``overwrite`` is false.

    Example:
        >>> import tempfile, pathlib
        >>> folder = save_hf(GPT(GPTConfig(context=8, d_model=16, n_layer=1, n_head=2)),
        ...                  pathlib.Path(tempfile.mkdtemp()) / "lm")
        >>> sorted(p.name for p in folder.iterdir())[:2]
        ['config.json', 'generation_config.json']
    """
    from nmsparse.io import save_pretrained_dense

    target = Path(path)
    empty_folder = target.is_dir() and not any(target.iterdir())
    if metadata is not None:
        json.dumps(metadata)  # fail before writing anything
    # the one writer of transformers folders (atomic, umask respected, never deletes beside the target)
    return save_pretrained_dense(
        to_hf_gpt2(model, metadata=metadata), target, metadata=metadata, overwrite=overwrite or empty_folder
    )


def load_hf(path: str | os.PathLike[str]) -> GPT:
    """Read a folder written by :func:`save_hf` (or any standard GPT-2 folder) back into a :class:`GPT`.

    Raises:
        InputError: the folder is missing or not a GPT-2 model.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise InputError(f"load_hf: {folder} has no config.json; expected a folder written by save_hf")
    from transformers import GPT2LMHeadModel

    return from_hf_gpt2(GPT2LMHeadModel.from_pretrained(str(folder)))
