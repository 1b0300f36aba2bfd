"""Channel permutations (issue 17): the search's objective against find_mask, and function-preserving permute_."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse.errors import ConfigError
from nmsparse.permute import find_chains, permute_, retained, search_permutation, stripe_group_search
from nmsparse.permute.search import retained_fast
from nmsparse.testing import tiny_llama

FAST = {"rounds": 4, "exact_rounds": 1, "sweeps": 0}


def _skewed(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, cols, generator=g).abs()
        * (torch.rand(cols, generator=g) ** 2 + 0.1)
        * (torch.rand(rows, 1, generator=g) ** 2 + 0.1)
    )


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "2:4-T", "4:8-T"])
def test_search_objective_matches_find_mask_and_never_loses(pattern):
    s = _skewed(32, 64)
    r = search_permutation(s, pattern, rounds=6, exact_rounds=2, sweeps=1)
    # the fast objective is the reference twin's: find_mask's optimal mask on the permuted scores
    assert r.before == pytest.approx(retained(s, pattern), rel=1e-6)
    assert r.after == pytest.approx(retained(s, pattern, r.row_perm, r.col_perm), rel=1e-6)
    assert r.after >= r.before
    assert r.after > r.before  # skewed columns: spreading them always helps here
    for perm, size in ((r.col_perm, 64), (r.row_perm, 32)):
        if perm is not None:
            assert sorted(perm.tolist()) == list(range(size))
    assert (r.row_perm is None) == (not pattern.endswith("-T"))


def test_search_mask_is_valid_on_permuted_weight():
    w = torch.randn(16, 32) * (torch.rand(32) ** 3)
    r = search_permutation(w.abs(), "4:8-T", **FAST)
    pw = w[r.row_perm][:, r.col_perm]
    mask = nmsparse.find_mask(pw, "4:8-T")
    assert nmsparse.is_nm_sparse(mask, "4:8-T")
    assert float((pw.abs() * mask).sum()) == pytest.approx(r.after, rel=1e-5)


def test_swap_gain_formula_matches_direct_evaluation():
    from nmsparse.permute.search import _swap_gains

    g = torch.Generator().manual_seed(1)
    for n, m in ((2, 4), (1, 4), (3, 4), (4, 8)):
        vs, vt = torch.rand(3, m, 5, generator=g), torch.rand(3, m, 5, generator=g)
        gains = _swap_gains(vs, vt, n)
        for p in range(3):
            base = vs[p].topk(n, 0).values.sum() + vt[p].topk(n, 0).values.sum()
            for a in range(m):
                for b in range(m):
                    s2, t2 = vs[p].clone(), vt[p].clone()
                    s2[a], t2[b] = vt[p, b], vs[p, a]
                    direct = s2.topk(n, 0).values.sum() + t2.topk(n, 0).values.sum() - base
                    assert float(gains[p, a, b]) == pytest.approx(float(direct), abs=1e-5)


def test_at_least_the_published_stripe_group_search_at_2_4():
    s = _skewed(64, 64, seed=3)
    baseline = retained(s, "2:4", col_perm=stripe_group_search(s))
    ours = search_permutation(s, "2:4").after
    assert baseline > retained(s, "2:4")
    assert ours >= baseline * (1 - 1e-6)


def _compiled():
    from nmsparse.permute import search

    kernels = search._kernels()
    if kernels is None:
        pytest.skip("numba kernels unavailable")
    return search, kernels


def test_compiled_kernels_match_their_torch_twins():
    search, K = _compiled()
    g = torch.Generator().manual_seed(2)
    for n, m in ((2, 4), (1, 4), (3, 4), (4, 8), (7, 8), (8, 16)):
        C, R = 6 * m, 2 * m + 3
        E = torch.rand(C, R, generator=g)
        E[0, :3] = E[1, :3]  # ties
        perm = torch.randperm(C, generator=g)
        s, t = torch.tensor([0, 2, 5]), torch.tensor([1, 4, 3])
        gains, tops = search._gains_fast(K, E.numpy(), perm.numpy(), s.numpy(), t.numpy(), m, n)
        V = E[perm].view(-1, m, R)
        ref = search._swap_gains(V[s], V[t], n).view(3, m * m)
        assert torch.allclose(torch.from_numpy(gains), ref, atol=1e-4)
        ref_tops = search._topn_sum(V[s], n) + search._topn_sum(V[t], n)
        assert torch.allclose(torch.from_numpy(tops), ref_tops, rtol=1e-5)
        sums = search._stripe_sums_fast(K, E.numpy(), perm.view(-1, m).numpy(), n)
        assert torch.allclose(torch.from_numpy(sums), search._topn_sum(V, n), rtol=1e-6)
        if n <= m // 2 or m == 4:
            X = torch.rand(C, 4 * m, generator=g)
            tiles = search._tile_sums_fast(K, X.numpy(), perm.view(-1, m).numpy(), n)
            ref_tiles = search._exact_tile_sums(search._tiles_of(X[perm].view(-1, m, 4 * m), m).reshape(-1, m, m), n)
            assert torch.allclose(torch.from_numpy(tiles).reshape(-1), ref_tiles, rtol=1e-9)


@pytest.mark.parametrize("sample", [1024, 24])
def test_compiled_swap_rounds_make_the_torch_moves(sample):
    # the same pairings, gains up to rounding, the same all-rows check (sample < rows): the same permutation
    search, K = _compiled()
    ST = _skewed(64, 96, seed=5).T.contiguous()
    for n, m in ((2, 4), (4, 8)):
        fast, rf = search._proxy_rounds_fast(ST, n, m, 6, 2, torch.Generator().manual_seed(1), math.inf, sample, K)
        ref, rr = search._proxy_rounds(ST, n, m, 6, 2, torch.Generator().manual_seed(1), math.inf, False, sample)
        assert torch.equal(fast, ref) and rf == rr
        assert search._rowwise(ST[fast].T, n, m) > search._rowwise(ST.T, n, m)


@pytest.mark.slow
def test_large_matrix_polishes_both_axes_on_one_tile_table():
    # above 4M entries the compiled -T search runs both axes' swap rounds, then both polishes on one shared table
    _compiled()
    s = _skewed(2048, 2056, seed=7)
    r = search_permutation(s, "4:8-T", rounds=2, exact_rounds=1)
    assert [name for name, _ in r.history] == ["start", "cols polish", "rows polish", "end"]
    assert r.after == pytest.approx(retained(s, "4:8-T", r.row_perm, r.col_perm), rel=1e-6)
    assert r.after > r.before


def test_torch_path_without_compiled_kernels(monkeypatch):
    from nmsparse.permute import search

    s = _skewed(32, 64)
    fast = search_permutation(s, "4:8-T", rounds=4, exact_rounds=2)
    monkeypatch.setattr(search, "_kernels", lambda: None)
    slow = search_permutation(s, "4:8-T", rounds=4, exact_rounds=2)
    for r in (fast, slow):
        assert r.after == pytest.approx(retained(s, "4:8-T", r.row_perm, r.col_perm), rel=1e-6)
        assert r.after > r.before


# ------------------------------------------------------------------------------------------- models


def _check_same(model: nn.Module, batch, pattern: str, **kw) -> nmsparse.permute.PermuteReport:
    model.eval()
    with torch.no_grad():
        before = model(batch)
    report = permute_(model, pattern, [batch], **FAST, **kw)
    with torch.no_grad():
        after = model(batch)
    before = before.logits if hasattr(before, "logits") else before
    after = after.logits if hasattr(after, "logits") else after
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert report.chains and report.permutations, "something was permuted"
    assert report.after >= report.before - 1e-9
    return report


def test_gpt2_conv1d_and_save_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config)
    x = torch.randint(0, 64, (2, 16))
    report = _check_same(model, x, "4:8-T", scores="wanda")
    names = {c.name for c in report.chains}
    assert "transformer.h.0.mlp" in names and "transformer.h.1.attn.v3" in names
    model.save_pretrained(tmp_path)
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(x).logits, model(x).logits)


def test_llama_grouped_query_attention():
    pytest.importorskip("transformers")
    model = _tiny_llama()
    x = torch.randint(0, 64, (2, 12))
    report = _check_same(model, x, "2:4", scores="sparsegpt")
    value = [c for c in report.chains if c.name == "model.layers.0.self_attn.v1"][0]
    # value head 1 serves query heads 2 and 3: both o_proj column groups share its permutation
    assert value.members == [
        "model.layers.0.self_attn.v_proj:out",
        "model.layers.0.self_attn.o_proj:in",
        "model.layers.0.self_attn.o_proj:in",
    ]
    _check_same(model, x, "4:8-T")


def test_recipe_decoder_and_state_dict():
    from nmsparse.recipes.lm.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, context=16, d_model=32, n_layer=2, n_head=2))
    x = torch.randint(0, 64, (3, 16))
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    _check_same(model, x, "2:4-T", scores="magnitude")
    fresh = GPT(GPTConfig(vocab_size=64, context=16, d_model=32, n_layer=2, n_head=2)).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))
    assert set(state_before) == set(model.state_dict())


def _recipe_cnn():
    try:
        from nmsparse.recipes.classify.models import SmallCNN
    except ImportError:  # before the recipes/train -> recipes/classify rename
        from nmsparse.recipes.train.models import SmallCNN  # type: ignore[no-redef]
    return SmallCNN(width=16)


@pytest.mark.parametrize("train_stats", [False, True])
def test_recipe_cnn_with_batch_norm(train_stats):
    torch.manual_seed(0)
    model = _recipe_cnn()
    x = torch.randn(8, 1, 8, 8)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8))  # non-trivial running statistics
    report = _check_same(model, x, "4:8-T", scores="wanda")
    assert {c.name for c in report.chains} == {"conv1", "conv2", "conv3"}
    assert "fc" in report.skipped
    if train_stats:  # batch statistics (train mode) are permuted consistently too
        model.train()
        clone = _recipe_cnn()
        clone.load_state_dict(model.state_dict())
        clone.train()
        torch.testing.assert_close(model(x), clone(x))


def test_resnet_block_keeps_residual_channels():
    try:
        from nmsparse.recipes.classify.models import BasicBlock
    except ImportError:
        from nmsparse.recipes.train.models import BasicBlock  # type: ignore[no-redef]
    block = BasicBlock(16, 16).eval()
    chains, why = find_chains(block)
    assert [c.name for c in chains] == ["conv1"]  # conv2's output is added to the identity: not free
    assert "add" in why["conv2"] or "output" in why["conv2"]
    _check_same(block, torch.randn(2, 16, 8, 8), "2:4")


def test_unknown_model_reports_and_refuses_masks():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.b = nn.Linear(16, 8)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + h[..., :8]  # the hidden state leaks into the output: no free permutation

    model = Odd()
    report = permute_(model, "2:4", [torch.randn(2, 8)])
    assert not report.chains and "a" in report.skipped
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    nmsparse.prune_(mlp, "2:4")
    with pytest.raises(ConfigError, match="already has masks"):
        permute_(mlp, "2:4")


def test_permuted_then_pruned_keeps_more():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    with torch.no_grad():
        model[2].weight.mul_(torch.rand(64) ** 3)  # skewed input channels of the layer that is pruned
    plain = retained_fast(model[2].weight.abs(), "2:4")
    report = permute_(model, "2:4", [torch.randn(4, 32)])
    assert retained_fast(model[2].weight.abs(), "2:4") > plain
    assert report.layers[-1].after == pytest.approx(retained_fast(model[2].weight.abs(), "2:4"), rel=1e-6)


def test_residual_stream_gpt2_tied_llama_and_recipe():
    """The residual stream (opt-in): one permutation across embeddings, norms, every stream projection, lm_head."""
    transformers = pytest.importorskip("transformers")
    from nmsparse.recipes.lm.model import GPT, GPTConfig

    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, 16))
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
        )
    )
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # tied: permuted once
    llama = _tiny_llama(seed=None)
    recipe = GPT(GPTConfig(vocab_size=64, context=16, d_model=32, n_layer=2, n_head=2))
    for model, pattern in ((gpt2, "4:8-T"), (llama, "4:8-T"), (recipe, "2:4-T")):
        report = _check_same(model, x, pattern, residual=True)
        assert "residual" in report.permutations


# ------------------------------------------------------------------------------------------- workflows (part 3)


@pytest.fixture
def fast_permute(monkeypatch):
    """The workflows call ``nmsparse.permute.permute_`` at run time: give it the tests' small search effort."""
    import functools

    import nmsparse.permute as permute_module

    monkeypatch.setattr(permute_module, "permute_", functools.partial(permute_, **FAST))


def _tiny_llama(seed: int | None = 0):
    """Two blocks, grouped-query attention (4 query heads, 2 value heads of 16); needs transformers."""
    return tiny_llama(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        seed=seed,
    )


def test_oneshot_permute_llama_saves_and_reloads_as_an_ordinary_model(tmp_path, fast_permute):
    import json

    from nmsparse.oneshot import OneShotConfig, prune_oneshot_

    transformers = pytest.importorskip("transformers")
    model = _tiny_llama()
    calibration = [torch.randint(0, 64, (2, 12)) for _ in range(2)]
    config = OneShotConfig(algorithm="wanda", permute=True)
    report = prune_oneshot_(model, calibration, "4:8-T", config=config)
    permutation = report.permutation
    assert permutation is not None and permutation.scores == "wanda" and permutation.permutations
    assert permutation.check_max_abs_diff is not None and permutation.check_max_abs_diff < 1e-4
    assert {c.name for c in permutation.chains} >= {"model.layers.0.mlp", "model.layers.1.self_attn.v1"}
    assert all(g.name in report.pruned for g in permutation.layers)  # the selected layers drive the search
    for name in report.pruned:
        assert nmsparse.is_nm_sparse(model.get_submodule(name).weight, "4:8-T")
    record = json.loads(json.dumps(report.to_dict()))
    assert record["permutation"]["chains"] and record["config"]["permute"] is True
    assert "permute_ 4:8-T (wanda scores)" in report.describe()
    model.save_pretrained(tmp_path)  # the permutation is in the weights: an ordinary folder
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits)


@pytest.mark.parametrize("algorithm", ["magnitude", "sparsegpt", "adaprune"])
def test_oneshot_permute_scores_follow_the_algorithm(algorithm, fast_permute):
    from nmsparse.oneshot import OneShotConfig, prune_oneshot_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    with torch.no_grad():
        model[2].weight.mul_(torch.rand(32) ** 3)
    calibration = [torch.randn(32, 16) for _ in range(2)]
    report = prune_oneshot_(model, calibration, "2:4", config=OneShotConfig(algorithm=algorithm, permute=True))
    assert report.permutation is not None
    assert report.permutation.scores == {"adaprune": "wanda"}.get(algorithm, algorithm)
    assert report.permutation.after >= report.permutation.before
    override = OneShotConfig(algorithm=algorithm, permute=True, permute_scores="magnitude")
    model2 = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    assert prune_oneshot_(model2, calibration, "2:4", config=override).permutation.scores == "magnitude"


def test_adaprune_and_prune_take_permute(fast_permute):
    from nmsparse.adaprune import AdaPruneConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    with torch.no_grad():
        model[2].weight.mul_(torch.rand(32) ** 3)
    plain = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    plain.load_state_dict(model.state_dict())
    x = torch.randn(8, 16)
    report = nmsparse.adaprune_(model, [x], AdaPruneConfig(pattern="2:4", permute=True, iterations=2))
    assert report.permutation is not None and report.permutation.scores == "wanda"
    assert report.config["permute"] is True

    torch.manual_seed(1)
    dense = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    with torch.no_grad():
        dense[2].weight.mul_(torch.rand(32) ** 3)
    permuted = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    permuted.load_state_dict(dense.state_dict())
    pruned = nmsparse.prune_(permuted, "2:4", permute=True)
    assert pruned.permutation is not None and pruned.permutation.scores == "magnitude"
    assert pruned.to_dict()["permutation"]["chains"] and "permute_ 2:4" in pruned.describe()
    baseline = nmsparse.prune_(dense, "2:4")
    assert "permutation" not in baseline.to_dict() and baseline.permutation is None
    assert pruned.pruned[1].kept_magnitude > baseline.pruned[1].kept_magnitude  # the permuted layer keeps more
    with pytest.raises(ConfigError, match="already has masks"):
        nmsparse.prune_(permuted, "2:4", permute=True)
    with pytest.raises(ConfigError, match="cannot take scores"):
        nmsparse.prune_(plain, "2:4", permute=True, scores={"0.weight": torch.ones(32, 16)})
    assert not nmsparse.is_pruned(plain[0])


def test_permute_off_is_bit_identical_and_settings_are_checked():
    from nmsparse.oneshot import OneShotConfig, prune_oneshot_

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))

    calibration = [torch.randn(32, 16) for _ in range(2)]
    for algorithm in ("sparsegpt", "wanda"):
        a, b = mlp(), mlp()
        ra = prune_oneshot_(a, calibration, "2:4-T", algorithm=algorithm)
        rb = prune_oneshot_(b, calibration, "2:4-T", config=OneShotConfig(algorithm=algorithm, permute=False))
        assert ra.permutation is None and rb.permutation is None and rb.to_dict()["permutation"] is None
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
        assert all(torch.equal(m, nmsparse.get_masks(b)[k]) for k, m in nmsparse.get_masks(a).items())
    a, b = mlp(), mlp()
    nmsparse.prune_(a, "4:8-T")
    nmsparse.prune_(b, "4:8-T", permute=False)
    assert all(torch.equal(va, vb) for va, vb in zip(a.state_dict().values(), b.state_dict().values()))

    with pytest.raises(ConfigError, match="needs permute=True"):
        OneShotConfig(permute_residual=True)
    with pytest.raises(ConfigError, match="permute_scores"):
        OneShotConfig(permute=True, permute_scores="hessian")
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = OneShotConfig(algorithm="magnitude", permute=True, permute_scores="wanda")
    with pytest.raises(ConfigError, match="needs calibration"):
        prune_oneshot_(model, None, "2:4", config=config)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing changed


@pytest.mark.parametrize("gram", [False, True], ids=["wanda", "sparsegpt"])
def test_input_statistics_leave_padding_out_as_the_engine_does(gram):
    # permute_'s saliency must see the tokens prune_oneshot_ calibrates on: right padding of a causal LM changes
    # no real token's hidden state, so a padded batch gives the statistics of its unpadded rows
    pytest.importorskip("transformers")
    from nmsparse.permute.permute import input_statistics
    from nmsparse.testing import tiny_llama

    model = tiny_llama().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")]
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0
    padded = [{"input_ids": ids, "attention_mask": attention}]
    unpadded = [ids[:1], ids[1:, :8]]
    expected = input_statistics(model, names, unpadded, gram=gram)
    got = input_statistics(model, names, padded, gram=gram)
    assert all(torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-4) for n in names)
    counted = input_statistics(model, names, padded, gram=gram, ignore_padding=False)
    assert not all(torch.allclose(counted[n], expected[n], rtol=1e-4, atol=1e-4) for n in names)


@pytest.mark.parametrize("ignore_padding", [True, False])
def test_oneshot_permute_passes_its_padding_rule_on(monkeypatch, ignore_padding):
    import nmsparse.permute as permute_module
    from nmsparse.oneshot import OneShotConfig, prune_oneshot_

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return permute_(*args, **{**FAST, **kwargs})

    monkeypatch.setattr(permute_module, "permute_", spy)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    config = OneShotConfig(algorithm="wanda", permute=True, ignore_padding=ignore_padding)
    prune_oneshot_(model, [torch.randn(32, 16)], "2:4", config=config)
    assert seen["ignore_padding"] is ignore_padding
