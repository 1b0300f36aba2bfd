"""One-shot pruning (nmsparse.oneshot): SparseGPT against its slow reference, optimal -T masks, sequential blocks,
memory budget, and the verb on tiny transformers GPT-2 / LLaMA models built from configs."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse.errors import ConfigError, InputError, OverwriteError
from nmsparse.layout import to_blocks
from nmsparse.oneshot import OneShotConfig, find_blocks, prune_oneshot_
from nmsparse.oneshot.layer import reconstruction_error, sparsegpt
from nmsparse.pattern import NMPattern
from nmsparse.testing import assert_valid_mask, bruteforce_block_optimum, linprog_block_optimum, tiny_llama

PATTERNS = ["2:4", "4:8", "2:4-T", "4:8-T"]


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``get_masks`` keyed by module name (the tensor name without its ``.weight``)."""
    return {k.removesuffix(".weight"): v for k, v in nmsparse.get_masks(model).items()}


def sparsegpt_reference(
    weight: torch.Tensor, gram: torch.Tensor, pattern: NMPattern, *, damping: float = 0.01
) -> SimpleNamespace:
    """Slow, plain twin of :func:`sparsegpt` (float64, one column at a time, explicit inverses).

    For column ``j`` (columns ``F = j, j+1, ...`` not yet pruned) it forms ``G = (H_FF)^-1`` explicitly. When
    ``j`` starts a group of ``m`` columns, the group's mask is chosen on the saliency ``w_k^2 / [(H_{k:,k:})^-1]_00``
    of the current weights; then the pruned part of column ``j`` is removed and the remaining columns get the OBS
    update ``w_F -= (w_j - q_j) / G_00 * G_0,:``. Dead inputs (``H_jj = 0``) get ``H_jj = 1`` and zero weights.
    """
    rows, cols = weight.shape
    m = pattern.m
    hessian, w = gram.double().clone(), weight.double().clone()
    diag = torch.diagonal(hessian)
    dead = diag == 0
    w[:, dead] = 0.0
    diag[dead] = 1.0
    diag += damping * float(diag.mean())
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if j % m == 0:
            d2 = torch.stack([torch.linalg.inv(hessian[k:, k:])[0, 0] for k in range(j, j + m)])
            saliency = w[:, j : j + m] ** 2 / d2
            mask[:, j : j + m] = nmsparse.find_mask(
                w[:, j : j + m], pattern, scores=saliency, method="exact" if pattern.transposable else "topn"
            )
        inverse = torch.linalg.inv(hessian[j:, j:])
        q = w[:, j] * mask[:, j]
        w[:, j:] -= ((w[:, j] - q) / inverse[0, 0]).unsqueeze(1) * inverse[0].unsqueeze(0)
        w[:, j] = q
    return SimpleNamespace(weight=w, mask=mask)


def _problem(rows: int, cols: int, tokens: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=generator, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=generator, dtype=torch.float64) @ mix  # correlated inputs
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    return weight, x.T @ x


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparsegpt_matches_reference(pattern):
    weight, gram = _problem(16, 40)
    gram[3, :] = gram[:, 3] = 0.0  # a dead input: its weights must go, its Hessian row becomes the identity's
    fast = sparsegpt(weight, gram, NMPattern.parse(pattern), block_size=12)  # lazy blocks cross group edges
    slow = sparsegpt_reference(weight, gram, NMPattern.parse(pattern))
    assert torch.equal(fast.mask, slow.mask)
    torch.testing.assert_close(fast.weight, slow.weight, rtol=0, atol=1e-9)
    assert bool((fast.weight[~fast.mask] == 0).all())
    assert_valid_mask(fast.mask, pattern, exact_n=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pattern", ["2:4", "4:8-T"])
def test_sparsegpt_error_from_its_sweep_equals_the_reconstruction_error(pattern, dtype):
    """The sweep's OBS losses, less the damping's share, are tr(dW H dW^T) on the undamped H (the report's)."""
    weight, gram = _problem(32, 64, tokens=40)  # fewer tokens than inputs: the damping carries the factorisation
    gram[5, :] = gram[:, 5] = 0.0
    weight, gram = weight.to(dtype), gram.to(dtype)
    result = sparsegpt(weight, gram, NMPattern.parse(pattern), damping=0.05, block_size=16)
    expected = reconstruction_error(weight, result.weight, gram)[0]
    assert result.error == pytest.approx(expected, rel=1e-9 if dtype == torch.float64 else 2e-6)


def test_sparsegpt_float32_close_to_float64():
    weight, gram = _problem(32, 64)
    pattern = NMPattern.parse("2:4")
    fast = sparsegpt(weight.float(), gram.float(), pattern)
    slow = sparsegpt_reference(weight, gram, pattern)
    agree = (fast.mask == slow.mask).float().mean().item()
    assert agree > 0.99
    e32 = reconstruction_error(weight, fast.weight.double(), gram)[0]
    e64 = reconstruction_error(weight, slow.weight, gram)[0]
    assert abs(e32 - e64) / e64 < 0.02


def _score_prune(method: str, weight: torch.Tensor, gram: torch.Tensor, p: NMPattern) -> torch.Tensor:
    """Mask of magnitude (``|w|``) or Wanda (``|w| * sqrt(diag H)``) from the solver the engine uses."""
    scores = weight.abs() * (torch.diagonal(gram).sqrt() if method == "wanda" else 1.0)
    return nmsparse.find_mask(weight, p, method="exact" if p.transposable else "topn", scores=scores)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparsegpt_beats_magnitude_and_wanda_on_its_objective(pattern):
    weight, gram = _problem(32, 64, seed=1)
    p = NMPattern.parse(pattern)
    errors = {
        m: reconstruction_error(weight, weight * _score_prune(m, weight, gram, p), gram)[0]
        for m in ("magnitude", "wanda")
    }
    errors["sparsegpt"] = reconstruction_error(weight, sparsegpt(weight, gram, p).weight, gram)[0]
    assert errors["sparsegpt"] < errors["wanda"] and errors["sparsegpt"] < errors["magnitude"]


@pytest.mark.parametrize("pattern", ["2:4-T", "4:8-T"])
def test_sparsegpt_transposable_groups_are_optimal_for_their_saliency(pattern):
    p = NMPattern.parse(pattern)
    weight, gram = _problem(16, 32, seed=2)
    seen = []
    sparsegpt(weight, gram, p, block_size=16, record=lambda col, sal, mask: seen.append((col, sal, mask)))
    assert [c for c, _, _ in seen] == list(range(0, 32, p.m))
    for _, saliency, mask in seen:
        for block, keep in zip(to_blocks(saliency, p.m), to_blocks(mask, p.m)):
            if p.m <= 5:
                best, _ = bruteforce_block_optimum(block, p.n)
            else:
                best, _ = linprog_block_optimum(block, p.n)
            kept = float(block[keep].sum())
            assert kept == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_transposable_masks_of_score_methods_are_exact_for_their_scores(method):
    p = NMPattern.parse("2:4-T")
    weight, _ = _problem(16, 32, seed=3)
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(3))
    layer = nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    prune_oneshot_(layer, [x], p, algorithm=method, config=OneShotConfig(dtype="float64"))
    mask = nmsparse.get_masks(layer)["weight"]
    gram = x.double().T @ x.double()
    scores = weight.float().double().abs() * (torch.diagonal(gram).sqrt() if method == "wanda" else 1.0)
    assert torch.equal(mask, nmsparse.find_mask(scores, p, method="exact"))
    for block, keep in zip(to_blocks(scores, 4), to_blocks(mask, 4)):
        best, _ = bruteforce_block_optimum(block, 2)
        assert float(block[keep].sum()) == pytest.approx(best, rel=1e-12)


# ------------------------------------------------------------------------------------------ the verb on toy models


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class _Stack(nn.Module):
    def __init__(self, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _calibration(seed: int = 0, batches: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 10, 8, generator=generator) for _ in range(batches)]


def test_blocks_found_and_outside_layers_stay_dense():
    torch.manual_seed(0)
    model = _Stack()
    assert [n for n, _ in find_blocks(model, ["blocks.0.up", "head"])] == ["blocks.0", "blocks.1", "blocks.2"]
    report = prune_oneshot_(model, _calibration(), "4:8-T", algorithm="sparsegpt")
    assert [r.name for r in report.layers] == [f"blocks.{i}.{k}" for i in range(3) for k in ("up", "down")]
    assert set(report.skipped) == {"embed", "head"}
    assert "outside" in report.skipped["head"]
    assert not nmsparse.is_pruned(model.head)
    for mask in _masks(model).values():
        assert_valid_mask(mask, "4:8-T", exact_n=True)
    assert report.blocks == 3 and len(report.block_seconds) == 3
    assert all(0 <= r.relative_error < 1 and r.tokens == 120 for r in report.layers)


def test_sequential_blocks_see_the_pruned_blocks_outputs():
    """Block 1's Wanda masks must come from the input norms of the model whose block 0 is already pruned."""
    torch.manual_seed(0)
    model = _Stack(depth=2)
    expected_model = copy.deepcopy(model)
    dense = copy.deepcopy(model)
    calibration = _calibration()
    prune_oneshot_(model, calibration, "2:4", algorithm="wanda")

    prune_oneshot_(expected_model, calibration, "2:4", algorithm="wanda", config=OneShotConfig(include=["blocks.0.*"]))
    inputs = []
    hook = expected_model.blocks[1].up.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    with torch.no_grad():
        for batch in calibration:
            expected_model(batch)
    hook.remove()
    norms = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs]).norm(dim=0)
    weight = expected_model.blocks[1].up.weight.detach()
    expected = nmsparse.find_mask(weight, "2:4", scores=weight.abs() * norms)
    assert torch.equal(_masks(model)["blocks.1.up"], expected)

    # the dense model's activations differ, so the check above can tell the two apart
    dense_norms = []
    hook = dense.blocks[1].up.register_forward_pre_hook(lambda _m, args: dense_norms.append(args[0]))
    with torch.no_grad():
        for batch in calibration:
            dense(batch)
    hook.remove()
    assert not torch.allclose(torch.cat([x.reshape(-1, 16) for x in dense_norms]).norm(dim=0), norms)


def test_sequential_false_uses_dense_activations():
    torch.manual_seed(0)
    model = _Stack(depth=2)
    reference = copy.deepcopy(model)
    calibration = _calibration()
    prune_oneshot_(model, calibration, "2:4", algorithm="wanda", config=OneShotConfig(sequential=False))
    inputs = []
    hook = reference.blocks[1].up.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    with torch.no_grad():
        for batch in calibration:
            reference(batch)
    hook.remove()
    norms = torch.cat([x.reshape(-1, 16) for x in inputs]).norm(dim=0)
    weight = reference.blocks[1].up.weight.detach()
    assert torch.equal(_masks(model)["blocks.1.up"], nmsparse.find_mask(weight, "2:4", scores=weight.abs() * norms))


def test_memory_budget_refusal_leaves_model_unchanged():
    torch.manual_seed(0)
    model = _Stack()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"max_memory_mb=0.001.*nothing was changed"):
        prune_oneshot_(model, _calibration(), "2:4", config=OneShotConfig(max_memory_mb=0.001))
    assert not any(nmsparse.is_pruned(m) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_budget_covers_tracked_working_memory():
    torch.manual_seed(0)
    report = prune_oneshot_(_Stack(width=32), _calibration(), "2:4", algorithm="sparsegpt")
    assert 0 < report.peak_tracked_mb <= report.memory_estimate_mb <= report.max_memory_mb


def test_magnitude_needs_no_calibration_and_equals_find_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    weight = model[0].weight.detach().clone()
    report = prune_oneshot_(model, None, "2:4-T", algorithm="magnitude")
    assert [r.name for r in report.layers] == ["0", "2"]
    assert torch.equal(_masks(model)["0"], nmsparse.find_mask(weight, "2:4-T", method="exact"))


def test_bad_inputs_are_clear_errors():
    model = _Stack()
    with pytest.raises(ConfigError, match="algorithm must be one of"):
        prune_oneshot_(model, _calibration(), "2:4", algorithm="obs")
    with pytest.raises(InputError, match="needs calibration data"):
        prune_oneshot_(model, None, "2:4", algorithm="sparsegpt")
    with pytest.raises(InputError, match="wrap one batch in a list"):
        prune_oneshot_(model, torch.randn(2, 8), "2:4")
    with pytest.raises(InputError, match="empty"):
        prune_oneshot_(model, [], "2:4")
    with pytest.raises(ConfigError, match="OneShotConfig"):
        prune_oneshot_(model, _calibration(), "2:4", config={"damping": 0.1})
    with pytest.raises(ConfigError, match="no layer of the model can take pattern 2:4"):
        prune_oneshot_(nn.Sequential(nn.Linear(6, 6)), [torch.randn(2, 6)], "2:4")
    with pytest.raises(ConfigError, match="damping"):
        OneShotConfig(options={"damping": -1.0})
    with pytest.raises(ConfigError, match="block_size.*did you mean"):
        OneShotConfig(algorithm="adaprune", options={"block_size": 4})
    assert OneShotConfig.from_dict(OneShotConfig(include=["a.*"]).to_dict()) == OneShotConfig(include=("a.*",))


def test_already_pruned_layers_are_re_pruned_on_their_survivors():
    torch.manual_seed(0)
    model = _Stack(depth=1)
    nmsparse.prune_(model, "4:8", include=["blocks.0.up"])
    survivors = model.blocks[0].up.weight.detach() != 0
    report = prune_oneshot_(model, _calibration(), "2:8", algorithm="wanda")
    assert [r.name for r in report.layers] == ["blocks.0.up", "blocks.0.down"]
    assert bool((_masks(model)["blocks.0.up"] <= survivors).all())  # the new mask keeps only survivors


def test_layers_outside_the_blocks_are_pruned_last_when_asked():
    torch.manual_seed(0)
    model = _Stack(depth=2)
    report = prune_oneshot_(
        model, _calibration(), "2:4", algorithm="wanda", config=OneShotConfig(prune_outside_blocks=True)
    )
    assert report.pruned[-2:] == ["embed", "head"] and report.blocks == 3 and not report.skipped
    assert report.layers[-1].block == 2 and report.layers[-1].tokens == 4 * 10 * 3


def test_old_names_are_deprecated_but_work():
    calibration = _calibration()
    torch.manual_seed(0)
    new = prune_oneshot_(
        _Stack(),
        calibration,
        "2:4",
        algorithm="sparsegpt",
        config=OneShotConfig(options={"damping": 0.05}, memory_budget="64MiB"),
    )
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="algorithm"):
        old = prune_oneshot_(
            _Stack(), calibration, "2:4", method="sparsegpt", config=OneShotConfig(damping=0.05, max_memory_mb=64.0)
        )
    assert [r.relative_error for r in old] == [r.relative_error for r in new]
    assert old.memory_budget == new.memory_budget == 64 << 20
    assert torch.equal(old.model.blocks[0].up.weight, new.model.blocks[0].up.weight)


# ------------------------------------------------------------------------------------------ transformers models

transformers = pytest.importorskip("transformers")


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def _llama() -> nn.Module:
    return tiny_llama(num_hidden_layers=2, max_position_embeddings=64, pad_token_id=0, seed=None)


def _tokens(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (4, 16), generator=generator) for _ in range(3)]


def _nm_masks(model: nn.Module) -> dict[str, nmsparse.NMMask]:
    return {
        f"{n}.weight": p
        for n, m in model.named_modules()
        if nmsparse.is_pruned(m)
        for p in m.parametrizations.weight
        if isinstance(p, nmsparse.NMMask)
    }


def _matrix_mask(model: nn.Module, name: str, mask: torch.Tensor) -> torch.Tensor:
    module = model.get_submodule(name)
    return mask.T if "Conv1D" in type(module).__name__ else mask


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "adaprune"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8-T"])
def test_verb_on_transformers_models(build, method, pattern, tmp_path):
    torch.manual_seed(0)
    model = build()
    linears = [n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D") and n != "lm_head"]
    report = prune_oneshot_(model, _tokens(), pattern, algorithm=method, config=OneShotConfig(adaprune_iterations=5))
    masks = _masks(model)
    assert sorted(r.name for r in report.layers) == sorted(linears) == sorted(masks)
    assert "lm_head" in report.skipped
    for name, mask in masks.items():
        assert_valid_mask(_matrix_mask(model, name, mask), pattern, exact_n=True)
    if method != "magnitude":
        assert all(r.tokens == 4 * 16 * 3 for r in report.layers)


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_saved_folder_reloads_to_identical_logits(build, tmp_path):
    from nmsparse.hf import load_causal_lm, load_masks_into_, save_pruned_pretrained
    from nmsparse.io import MASKS_FILE

    torch.manual_seed(0)
    model = build()
    prune_oneshot_(model, _tokens(), "2:4-T", algorithm="sparsegpt")
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        expected = model(ids).logits
    out = save_pruned_pretrained(model, tmp_path / "pruned", pattern="2:4-T", method="sparsegpt")
    record = json.loads((out / "nmsparse.json").read_text())
    assert record["metadata"]["oneshot"] == {"pattern": "2:4-T", "method": "sparsegpt"}
    assert (out / MASKS_FILE).is_file()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    again = load_causal_lm(f"hf:{out}")
    masks = load_masks_into_(again, out)
    assert set(masks) == {f"{n}.weight" for n in _masks(model)}
    assert {k: m.pattern and str(m.pattern) for k, m in _nm_masks(again).items()} == {k: "2:4-T" for k in masks}
    with torch.no_grad():
        assert torch.equal(again(ids).logits, expected)
    with pytest.raises(OverwriteError, match="overwrite"):
        save_pruned_pretrained(model, out)
    save_pruned_pretrained(model, out, overwrite=True)
    with torch.no_grad():  # saving twice left the caller's model intact (a squashed deepcopy broke it)
        assert torch.equal(model(ids).logits, expected)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_refit_reaches_the_least_squares_fit_with_the_mask_fixed(pattern):
    """CG from SparseGPT's weights reaches the exact per-row solve of the damped normal equations on the mask."""
    from nmsparse.oneshot.layer import refit

    weight, gram = _problem(16, 40, seed=3)
    gram[3, :] = gram[:, 3] = 0.0  # a dead input: its weights go to zero
    swept = sparsegpt(weight, gram, NMPattern.parse(pattern), damping=0.01)
    fitted = refit(weight, gram, swept.mask, swept.weight, shift=swept.shift, iterations=200, tol=1e-12)
    assert bool((fitted[~swept.mask] == 0).all())
    # from the dense weights (Wanda's start) the same minimum is reached
    from_dense = refit(weight, gram, swept.mask, shift=swept.shift, iterations=200, tol=1e-12)
    torch.testing.assert_close(from_dense, fitted, rtol=1e-6, atol=1e-8)
    h = gram.clone()
    h[3, 3] = 1.0
    diag = torch.diagonal(h)
    h += 0.01 * float(diag.mean()) * torch.eye(40, dtype=h.dtype)
    target = weight.clone()
    target[:, 3] = 0.0
    for r in range(16):
        keep = swept.mask[r].nonzero().squeeze(1)
        exact = torch.linalg.solve(h[keep][:, keep], (target[r] @ h)[keep])
        torch.testing.assert_close(fitted[r, keep], exact, rtol=1e-6, atol=1e-8)
    assert reconstruction_error(weight, fitted, gram)[0] < reconstruction_error(weight, swept.weight, gram)[0]


@pytest.mark.parametrize("algorithm", ["sparsegpt", "wanda"])
def test_refit_keeps_the_methods_masks_and_lowers_the_error(algorithm):
    plain = _Stack(width=32)
    fitted = copy.deepcopy(plain)
    a = prune_oneshot_(plain, _calibration(), "4:8-T", algorithm=algorithm)
    config = OneShotConfig(algorithm=algorithm, options={"refit": 25})
    b = prune_oneshot_(fitted, _calibration(), "4:8-T", config=config)
    for name, mask in _masks(fitted).items():
        assert_valid_mask(mask, "4:8-T", exact_n=True)
        if name.startswith("blocks.0."):  # same inputs (later blocks see the re-fitted outputs): same masks
            assert torch.equal(mask, _masks(plain)[name])
    assert b.mean_relative_error < a.mean_relative_error
    assert b.config["options"]["refit"] == 25
    with pytest.raises(ConfigError, match="refit"):
        OneShotConfig(algorithm=algorithm, options={"refit": -1})


def test_a_registered_method_names_its_permutation_saliency():
    from nmsparse.oneshot import LayerSolution, register_method, unregister_method
    from nmsparse.oneshot.config import permute_scores_for
    from nmsparse.oneshot.methods.magnitude import MagnitudeOptions

    def solve(layer):
        masks = layer.masks([w.abs() for w in layer.weights])
        return LayerSolution([w * m for w, m in zip(layer.weights, masks)], masks)

    register_method("test-own-scores", solve, options=MagnitudeOptions, permute_scores="sparsegpt")
    try:
        config = OneShotConfig(algorithm="test-own-scores", options={})
        assert permute_scores_for(config, "test-own-scores") == "sparsegpt"
        assert permute_scores_for(config.replace(permute=True, permute_scores="wanda"), "test-own-scores") == "wanda"
    finally:
        unregister_method("test-own-scores")
    builtin = {name: permute_scores_for(OneShotConfig(), name) for name in ("magnitude", "wanda", "sparsegpt")}
    assert builtin == {"magnitude": "magnitude", "wanda": "wanda", "sparsegpt": "sparsegpt"}
    assert permute_scores_for(OneShotConfig(), "adaprune") == "wanda"
    with pytest.raises(ConfigError, match="permute_scores must be one of"):
        register_method("test-bad-scores", solve, options=MagnitudeOptions, permute_scores="hessian")
