"""Which channel permutations a model allows: chains of layers whose shared channels can be reordered freely.

A **chain** is a set of channels written by some layers (*producers*: their output rows), read by others
(*consumers*: their input columns) and touched channel-wise in between (batch norms: their affine parameters and
running statistics; element-wise activations, dropout, pooling). Reordering those channels the same way in every
member leaves the model computing the same function. Found by:

* **Name rules for known architectures** (the module's own attributes, checked for type and size):
  - gated MLP (LLaMA, Mistral, Qwen2: ``gate_proj``, ``up_proj`` -> ``down_proj``): the intermediate channels;
  - GPT-2 MLP (``c_fc`` -> ``c_proj``, transformers ``Conv1D`` or ``nn.Linear`` as in nmsparse's LM recipe);
  - attention, per value head: the value rows of the head and the output projection's columns of every query head
    that reads it (grouped-query attention: ``num_heads / num_kv_heads`` column groups share one permutation).
    LLaMA-style ``v_proj``/``o_proj``, GPT-2's fused ``c_attn`` (value third) with ``c_proj``;
  - BERT (``intermediate.dense`` -> ``output.dense``; ``attention.self.value`` -> ``attention.output.dense``).
* **Graph tracing** (``torch.fx``) for other models, such as CNNs: from each ``Conv2d``/``Linear`` output through
  channel-wise modules and functions (batch norm, activations, pooling, dropout, a spatial mean) to the
  ``Conv2d``/``Linear`` layers that read it. Any other use of the channels (a residual addition, a concatenation,
  a reshape, the model's output) makes the chain illegal, and the report says so.

The residual stream's hidden dimension (embeddings, norms, every projection reading or writing it, the LM head,
tied weights) is one shared permutation: :func:`residual_chain` builds it for GPT-2 and LLaMA causal LMs, and
:func:`nmsparse.permute_` uses it only on request (``residual=True``). Query and key rows are left alone (rotary
embeddings pair dimensions within a head).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layout import is_transposed_layer as is_conv1d

__all__ = ["Member", "Chain", "find_chains", "residual_chain", "matrix_of", "apply_permutation"]


def _prunable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d)) or is_conv1d(module)


def matrix_of(module: nn.Module, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """The ``[out, K]`` matrix view of a layer's weight (or of a same-shaped ``tensor``), a copy."""
    t = _weight(module) if tensor is None else tensor
    t = t.detach()
    if is_conv1d(module):
        return t.T.contiguous()
    if t.dim() == 4:
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1).contiguous()
    return t.reshape(t.shape[0], -1).contiguous()


@dataclass(frozen=True)
class Member:
    """One layer's share of a chain: ``role`` ``"out"`` (output channels ``offset .. offset + size``), ``"in"``
    (input channels) or ``"norm"`` (a per-channel module: batch norm)."""

    name: str
    role: str
    offset: int = 0


@dataclass
class Chain:
    """Channels that one permutation may reorder: ``size`` channels, the members that hold them, and why legal."""

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    rule: str = ""


# ------------------------------------------------------------------------------------------- applying


def _take(t: torch.Tensor, dim: int, offset: int, perm: torch.Tensor) -> None:
    """In place: ``t``'s entries ``offset .. offset + len(perm)`` along ``dim`` reordered (new i = old perm[i])."""
    idx = torch.arange(t.shape[dim], device=t.device)
    idx[offset : offset + len(perm)] = perm.to(t.device) + offset
    with torch.no_grad():
        t.copy_(t.index_select(dim, idx))


def apply_permutation(model: nn.Module, chain: Chain, perm: torch.Tensor) -> None:
    """Reorder ``chain``'s channels in every member of ``model`` (in place): new channel ``i`` = old ``perm[i]``."""
    modules = dict(model.named_modules())
    done: set[tuple[int, int, int]] = set()  # (address, dim, offset): a tied weight (lm_head = wte) is permuted once

    def take(t: torch.Tensor, dim: int) -> None:
        key = (t.data_ptr(), dim, member.offset)
        if key not in done:
            done.add(key)
            _take(t, dim, member.offset, perm)

    for member in chain.members:
        module = modules[member.name]
        if member.role == "emb":  # an embedding table [vocab, hidden]: the hidden channels
            take(_weight(module), 1)
            continue
        if member.role == "norm":
            for attr in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(module, attr, None)
                if isinstance(t, torch.Tensor):
                    _take(t, 0, member.offset, perm)
            continue
        bias = getattr(module, "bias", None)
        if member.role == "out":
            take(_weight(module), 1 if is_conv1d(module) else 0)
            if isinstance(bias, torch.Tensor):
                take(bias, 0)
        else:
            take(_weight(module), 0 if is_conv1d(module) else 1)


def permute_matrix(matrix: torch.Tensor, module: nn.Module, member: Member, perm: torch.Tensor) -> torch.Tensor:
    """The ``[out, K]`` matrix view of ``module``'s scores after ``member``'s channels are reordered by ``perm``."""
    if member.role == "out":
        idx = torch.arange(matrix.shape[0])
        idx[member.offset : member.offset + len(perm)] = perm + member.offset
        return matrix[idx]
    channels = _in_channels(module)
    positions = matrix.shape[1] // channels
    view = matrix.reshape(matrix.shape[0], positions, channels)
    idx = torch.arange(channels)
    idx[member.offset : member.offset + len(perm)] = perm + member.offset
    return view[:, :, idx].reshape(matrix.shape)


def chain_block(matrix: torch.Tensor, module: nn.Module, member: Member, size: int) -> torch.Tensor:
    """``member``'s share of the chain's score matrix ``[*, size]``: the chain's channels as columns.

    A producer contributes its output rows transposed (``[K, size]``), a consumer its input columns, with every
    kernel position of a convolution as extra rows (``[positions * out, size]``): aligned ``m x m`` tiles of
    the stacked matrix are then exactly the member's own tiles (transposed for producers, whose optimum is the
    same).
    """
    if member.role == "out":
        return matrix[member.offset : member.offset + size].T
    channels = _in_channels(module)
    positions = matrix.shape[1] // channels
    view = matrix.reshape(matrix.shape[0], positions, channels)[:, :, member.offset : member.offset + size]
    return view.permute(1, 0, 2).reshape(-1, size)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _in_channels(module: nn.Module) -> int:
    if is_conv1d(module):
        return int(_weight(module).shape[0])  # stored [in, out]
    if isinstance(module, nn.Conv2d):
        return int(module.in_channels)
    return int(_weight(module).shape[1])


def _out_channels(module: nn.Module) -> int:
    if is_conv1d(module):
        return int(getattr(module, "nf"))  # noqa: B009
    return int(_weight(module).shape[0])


# ------------------------------------------------------------------------------------------- name rules


def _linear_like(module: object) -> bool:
    return isinstance(module, nn.Module) and (isinstance(module, nn.Linear) or is_conv1d(module))


def _mlp_rules(name: str, module: nn.Module) -> Chain | None:
    gate, up, down = (getattr(module, a, None) for a in ("gate_proj", "up_proj", "down_proj"))
    if _linear_like(up) and _linear_like(down) and (gate is None or _linear_like(gate)):
        assert isinstance(up, nn.Module) and isinstance(down, nn.Module)
        size = _out_channels(up)
        if _in_channels(down) != size or (isinstance(gate, nn.Module) and _out_channels(gate) != size):
            return None
        members = [Member(f"{name}.up_proj", "out")]
        if gate is not None:
            members.insert(0, Member(f"{name}.gate_proj", "out"))
        members.append(Member(f"{name}.down_proj", "in"))
        return Chain(
            f"{name}", size, members, "gated MLP: act(gate) * up -> down" if gate is not None else "MLP: up -> down"
        )
    fc, proj = getattr(module, "c_fc", None), getattr(module, "c_proj", None)
    if _linear_like(fc) and _linear_like(proj) and not hasattr(module, "c_attn"):
        assert isinstance(fc, nn.Module) and isinstance(proj, nn.Module)
        size = _out_channels(fc)
        if _in_channels(proj) != size:
            return None
        return Chain(
            name,
            size,
            [Member(f"{name}.c_fc", "out"), Member(f"{name}.c_proj", "in")],
            "GPT-2 MLP: c_fc -> activation -> c_proj",
        )
    return None


def _heads(module: nn.Module, width: int) -> tuple[int, int] | None:
    """``(num_heads, head_dim)`` of an attention module from its attributes."""
    heads = None
    for attr in ("num_heads", "n_head", "num_attention_heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            heads = value
            break
    head_dim = getattr(module, "head_dim", None)
    if head_dim is None:
        head_dim = getattr(module, "attention_head_size", None)
    if heads is None:
        config = getattr(module, "config", None)
        heads = getattr(config, "num_attention_heads", None)
    if not isinstance(heads, int) or heads <= 0:
        return None
    if not isinstance(head_dim, int):
        if width % heads:
            return None
        head_dim = width // heads
    if heads * head_dim != width:
        return None
    return heads, head_dim


def _value_heads(
    name: str, kind: str, value: str, output: str, heads: int, hd: int, *, kv: int | None = None, offset: int = 0
) -> list[Chain]:
    """One chain per value head ``g`` of ``kv`` (default: ``heads``): rows ``offset + g * hd`` of ``value``'s output
    and the ``output`` columns of every query head that reads it (``heads / kv`` of them under grouped-query
    attention)."""
    kv = heads if kv is None else kv
    rep = heads // kv
    chains = []
    for g in range(kv):
        readers = range(g * rep, (g + 1) * rep)
        which = f"head {g}" if rep == 1 else f"query heads {readers[0]}..{readers[-1]}"
        chains.append(
            Chain(
                f"{name}.v{g}",
                hd,
                [Member(f"{name}.{value}", "out", offset + g * hd)]
                + [Member(f"{name}.{output}", "in", h * hd) for h in readers],
                f"{kind} value head {g} -> {output} columns of {which}",
            )
        )
    return chains


def _attention_rules(name: str, module: nn.Module) -> list[Chain] | None:
    v, o = getattr(module, "v_proj", None), getattr(module, "o_proj", None)
    if _linear_like(v) and _linear_like(o):
        assert isinstance(v, nn.Module) and isinstance(o, nn.Module)
        found = _heads(module, _in_channels(o))
        if found is None:
            return None
        heads, hd = found
        kv = _out_channels(v) // hd
        if kv * hd != _out_channels(v) or kv == 0 or heads % kv:
            return None
        return _value_heads(name, "attention", "v_proj", "o_proj", heads, hd, kv=kv)
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if _linear_like(c_attn) and _linear_like(c_proj) and getattr(module, "q_attn", None) is None:
        assert isinstance(c_attn, nn.Module) and isinstance(c_proj, nn.Module)
        width = _in_channels(c_proj)
        if _out_channels(c_attn) != 3 * width:
            return None
        found = _heads(module, width)
        if found is None:
            return None
        heads, hd = found
        return _value_heads(name, "fused attention", "c_attn", "c_proj", heads, hd, offset=2 * width)
    self_attn = getattr(module, "self", None)
    output = getattr(module, "output", None)
    value = getattr(self_attn, "value", None)
    dense = getattr(output, "dense", None)
    if type(module).__name__.endswith("Attention") and _linear_like(value) and _linear_like(dense):
        assert isinstance(self_attn, nn.Module) and isinstance(value, nn.Module) and isinstance(dense, nn.Module)
        found = _heads(self_attn, _out_channels(value))
        if found is None or _in_channels(dense) != _out_channels(value):
            return None
        heads, hd = found
        return _value_heads(name, "BERT attention", "self.value", "output.dense", heads, hd)
    return None


def _bert_mlp_rule(name: str, module: nn.Module) -> Chain | None:
    inter, output = getattr(module, "intermediate", None), getattr(module, "output", None)
    a, b = getattr(inter, "dense", None), getattr(output, "dense", None)
    if type(module).__name__.endswith("Layer") and _linear_like(a) and _linear_like(b):
        assert isinstance(a, nn.Module) and isinstance(b, nn.Module)
        if _out_channels(a) != _in_channels(b):
            return None
        return Chain(
            f"{name}.intermediate",
            _out_channels(a),
            [Member(f"{name}.intermediate.dense", "out"), Member(f"{name}.output.dense", "in")],
            "BERT MLP: intermediate.dense -> activation -> output.dense",
        )
    return None


def _named_rules(model: nn.Module) -> list[Chain]:
    chains: list[Chain] = []
    for name, module in model.named_modules():
        prefix = name
        chain = _mlp_rules(prefix, module)
        if chain is not None:
            chains.append(chain)
            continue
        chain = _bert_mlp_rule(prefix, module)
        if chain is not None:
            chains.append(chain)
            continue
        attn = _attention_rules(prefix, module)
        if attn:
            chains.extend(attn)
    for chain in chains:  # module names of the root are "" -> strip the leading dot
        chain.name = chain.name.lstrip(".")
        chain.members = [Member(m.name.lstrip("."), m.role, m.offset) for m in chain.members]
    return chains


# ------------------------------------------------------------------------------------------- fx tracing

_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.dropout,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.relu6,
    torch.nn.functional.hardswish,
}
_CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "relu_", "contiguous"}


def _reduces_spatial_only(node: object) -> bool:
    """``x.mean(dim=(2, 3))`` / ``(-1, -2)`` / ``torch.mean(x, ...)`` on an NCHW tensor: keeps channel dim 1."""
    args = list(node.args[1:])  # type: ignore[attr-defined]
    kwargs = dict(node.kwargs)  # type: ignore[attr-defined]
    dims = kwargs.get("dim", args[0] if args else None)
    if dims is None:
        return False
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return bool(dims) and all(isinstance(d, int) and d in (2, 3, -1, -2) for d in dims)


def _fx_rules(model: nn.Module) -> tuple[list[Chain], dict[str, str]]:
    """Chains found by tracing ``model`` with ``torch.fx``; and why each other producer's output is not free."""
    try:
        import torch.fx as fx

        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure only means: no traced chains
        return [], {"*": f"the model cannot be traced with torch.fx ({type(exc).__name__}: {str(exc)[:120]})"}
    modules = dict(model.named_modules())
    chains: list[Chain] = []
    why: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        producer = modules.get(node.target)
        if not isinstance(producer, (nn.Conv2d, nn.Linear)):
            continue
        if isinstance(producer, nn.Conv2d) and producer.groups != 1:
            why[node.target] = "grouped convolution"
            continue
        conv = isinstance(producer, nn.Conv2d)
        size = _out_channels(producer)
        members = [Member(node.target, "out")]
        stack = list(node.users)
        seen: set[object] = set()
        bad = None
        while stack and bad is None:
            user = stack.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module":
                mod = modules.get(user.target)
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or not conv):
                        bad = f"read by {user.target} (grouped or not channel-first)"
                    elif _in_channels(mod) != size or (
                        isinstance(mod, nn.Linear) and conv and not user.meta.get("spatial_reduced", False)
                    ):
                        bad = f"read by {user.target} after a change of layout"
                    else:
                        members.append(Member(user.target, "in"))
                    continue
                if conv and isinstance(mod, nn.BatchNorm2d) and mod.num_features == size:
                    members.append(Member(user.target, "norm"))
                elif isinstance(mod, _CHANNELWISE_MODULES):
                    if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and mod.output_size in (1, (1, 1)):
                        for u in user.users:
                            u.meta["spatial_pool"] = True
                else:
                    bad = f"its output goes through {type(mod).__name__} ({user.target})"
                    continue
            elif user.op == "call_function" and user.target in _CHANNELWISE_FUNCTIONS:
                pass
            elif (
                user.op == "call_function"
                and user.target is torch.flatten
                and user.meta.get("spatial_pool")
                and (list(user.args[1:2]) == [1] or user.kwargs.get("start_dim") == 1)
            ):
                for u in user.users:
                    u.meta["spatial_reduced"] = True
            elif (
                user.op in ("call_method", "call_function")
                and (user.target in ("mean", "amax", "sum") or user.target in (torch.mean, torch.amax))
                and conv
                and _reduces_spatial_only(user)
            ):
                for u in user.users:
                    u.meta["spatial_reduced"] = True
            elif user.op == "call_method" and user.target in _CHANNELWISE_METHODS:
                pass
            elif user.op == "call_function" and user.target in (operator.getitem,):
                bad = f"its output is indexed ({user.name})"
                continue
            else:
                what = user.target if user.op != "output" else "the model's output"
                bad = f"its output reaches {getattr(what, '__name__', what)} ({user.op})"
                continue
            stack.extend(user.users)
        consumers = [m for m in members if m.role == "in"]
        if bad is None and not consumers:
            bad = "no layer reads its output"
        if bad is not None:
            why[node.target] = bad
            continue
        chains.append(Chain(node.target, size, members, "traced: " + " -> ".join(m.name for m in members)))
    return chains, why


def residual_chain(model: nn.Module) -> Chain | None:
    """The residual stream's hidden channels of a causal LM of a known family, as one chain (or ``None``).

    GPT-2 (transformers ``GPT2LMHeadModel``, nmsparse's LM recipe ``GPT``): ``transformer.wte``/``wpe`` columns,
    every ``ln_1``/``ln_2``/``ln_f`` weight and bias, the columns of ``attn.c_attn`` and ``mlp.c_fc``, the rows of
    ``attn.c_proj`` and ``mlp.c_proj`` (with biases), the columns of ``lm_head`` (tied to ``wte``: permuted once).
    LLaMA (``LlamaForCausalLM`` and look-alikes): ``model.embed_tokens``, every RMSNorm weight, q/k/v/gate/up
    columns, o/down rows, ``lm_head``. LayerNorm and RMSNorm commute with a permutation of their weights, so the
    logits are unchanged; the hidden states a caller might read are permuted, hence only models with an LM head.
    """
    modules = dict(model.named_modules())
    lm_head = modules.get("lm_head")
    if not _linear_like(lm_head):
        return None
    if "transformer.wte" in modules and "transformer.h" in modules and "transformer.ln_f" in modules:
        blocks = modules["transformer.h"]
        if not isinstance(blocks, nn.ModuleList):
            return None
        members = [Member("transformer.wte", "emb")]
        if isinstance(modules.get("transformer.wpe"), nn.Embedding):
            members.append(Member("transformer.wpe", "emb"))
        roles = [("ln_1", "norm"), ("attn.c_attn", "in"), ("attn.c_proj", "out")]
        roles += [("ln_2", "norm"), ("mlp.c_fc", "in"), ("mlp.c_proj", "out")]
        for i in range(len(blocks)):
            b = f"transformer.h.{i}"
            block = [Member(f"{b}.{suffix}", role) for suffix, role in roles]
            if any(m.name not in modules for m in block) or getattr(modules[f"{b}.attn"], "q_attn", None) is not None:
                return None
            members += block
        members += [Member("transformer.ln_f", "norm"), Member("lm_head", "in")]
        rule = "GPT-2 residual stream: embeddings, LayerNorms, c_attn/c_fc columns, c_proj rows, lm_head"
    elif "model.embed_tokens" in modules and "model.layers" in modules and "model.norm" in modules:
        blocks = modules["model.layers"]
        if not isinstance(blocks, nn.ModuleList):
            return None
        members = [Member("model.embed_tokens", "emb")]
        roles = [("input_layernorm", "norm")] + [(f"self_attn.{x}_proj", "in") for x in "qkv"]
        roles += [("self_attn.o_proj", "out"), ("post_attention_layernorm", "norm")]
        roles += [("mlp.gate_proj", "in"), ("mlp.up_proj", "in"), ("mlp.down_proj", "out")]
        for i in range(len(blocks)):
            b = f"model.layers.{i}"
            block = [Member(f"{b}.{suffix}", role) for suffix, role in roles]
            if any(m.name not in modules for m in block) or set(dict(modules[b].named_children())) - {
                "self_attn",
                "mlp",
                "input_layernorm",
                "post_attention_layernorm",
            }:
                return None
            if any(hasattr(modules[f"{b}.self_attn"], x) for x in ("q_norm", "k_norm")):
                return None  # per-head norms are fine, but keep to what is tested
            members += block
        members += [Member("model.norm", "norm"), Member("lm_head", "in")]
        rule = "LLaMA residual stream: embeddings, RMSNorms, q/k/v/gate/up columns, o/down rows, lm_head"
    else:
        return None
    size = int(_weight(modules[members[0].name]).shape[1])
    return Chain("residual", size, members, rule)


def find_chains(model: nn.Module) -> tuple[list[Chain], dict[str, str]]:
    """Every legal permutation chain of ``model``, and for each prunable layer left out of all chains, why.

    Name rules run first (transformers blocks); only a model without any named chain is traced with ``torch.fx``,
    so a channel belongs to one chain only.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> chains, why = find_chains(net)
        >>> [(c.name, [m.role for m in c.members]) for c in chains]
        [('0', ['out', 'norm', 'in'])]
    """
    chains = _named_rules(model)
    why: dict[str, str] = {}
    if not chains:
        chains, why = _fx_rules(model)
    covered_out = {m.name for c in chains for m in c.members if m.role == "out"}
    covered_in = {m.name for c in chains for m in c.members if m.role == "in"}
    reasons: dict[str, str] = {}
    for name, module in model.named_modules():
        if not _prunable(module):
            continue
        parts = []
        if name not in covered_out:
            reason = (
                why.get(name)
                or why.get("*")
                or "no known rule covers its output channels (residual stream, query/key, or an unknown architecture)"
            )
            parts.append(f"rows: {reason}")
        if name not in covered_in:
            parts.append("columns: its input channels are not the output of a permutable chain")
        if parts:
            reasons[name] = "; ".join(parts)
    return chains, reasons
