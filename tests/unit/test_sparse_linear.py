"""SparseLinear: same outputs and gradients as a masked dense nn.Linear (NMMask), packing logic, caching, state.

On CPU the masked dense path runs; the sparse path's plumbing (cache, re-pack on change, backward through the
packed operand) is exercised on CPU by substituting the dense masked matrix for the packed one. The cuSPARSELt
path itself is checked by the ``gpu`` tests (skipped without CUDA).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import nmsparse
from nmsparse.errors import BackendUnavailableError, ConfigError, InputError, MaskMismatchError
from nmsparse.nn import SparseLinear
from nmsparse.nn import linear as linear_mod
from nmsparse.nn.linear import _masked_for_packing, greedy_tile_keep, sparse_unavailable_reason
from nmsparse.nn.state import raw_state_dict
from nmsparse.testing import masked_linear_twin


def _reference(layer: SparseLinear) -> torch.nn.Linear:
    return masked_linear_twin(layer)


def _grads(module: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    y = module(x)
    gen = torch.Generator().manual_seed(seed)
    (y * torch.randn(y.shape, generator=gen).to(device=y.device, dtype=y.dtype)).sum().backward()
    if isinstance(module, SparseLinear):
        w = module.weight
    else:
        w = module.parametrizations.weight.original
    out = (y.detach(), x.grad, w.grad)
    if module.bias is not None:
        out += (module.bias.grad,)
    return out


def _assert_same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], **tol: float) -> None:
    assert len(got) == len(want)
    for name, a, b in zip(("y", "dx", "dw", "db"), got, want):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}", **tol)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode,decay", [("static", 0.0), ("straight-through", 0.0), ("straight-through", 0.05)])
def test_matches_masked_dense_linear_fp32(bias: bool, mode: str, decay: float) -> None:
    layer = SparseLinear(16, 8, bias=bias, mode=mode, decay=decay)
    ref = _reference(layer)
    x = torch.randn(2, 5, 16)
    _assert_same(_grads(layer, x), _grads(ref, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode,decay", [("static", 0.0), ("straight-through", 0.02)])
def test_matches_masked_dense_linear_bf16(mode: str, decay: float) -> None:
    layer = SparseLinear(32, 16, mode=mode, decay=decay, dtype=torch.bfloat16)
    ref = _reference(layer)
    x = torch.randn(7, 32).to(torch.bfloat16)
    _assert_same(_grads(layer, x), _grads(ref, x), rtol=1e-2, atol=1e-2)


def test_static_gradient_is_zero_on_pruned_and_straight_through_is_dense() -> None:
    static = SparseLinear(8, 8)
    _, _, dw = _grads(static, torch.randn(4, 8))[:3]
    assert bool((dw[~static.mask] == 0).all())
    st = SparseLinear(8, 8, mode="straight-through")
    _, _, dw = _grads(st, torch.randn(4, 8))[:3]
    assert bool((dw[~st.mask] != 0).any())


def test_autocast_bf16_on_cpu_matches_reference() -> None:
    layer = SparseLinear(16, 8, mode="straight-through", decay=0.01)
    ref = _reference(layer)
    x = torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(layer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _grads(ref, x)
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    _assert_same(got, want, rtol=1e-2, atol=1e-2)


def test_from_dense_shares_parameters_and_keeps_the_function() -> None:
    dense = nn.Linear(16, 8)
    opt = torch.optim.SGD(dense.parameters(), lr=0.1)
    layer = SparseLinear.from_dense(dense, pattern="2:4-T")
    assert layer.weight is dense.weight and layer.bias is dense.bias
    assert torch.equal(layer.mask, nmsparse.find_mask(dense.weight, "2:4-T", method="exact"))
    before = dense.weight.detach().clone()
    layer(torch.randn(3, 16)).sum().backward()
    opt.step()  # the optimizer built on the dense layer updates the sparse layer
    assert not torch.equal(before, layer.weight)
    assert bool((layer.weight[~layer.mask] == before[~layer.mask]).all()), "static: pruned weights do not move"


def test_from_dense_errors() -> None:
    with pytest.raises(ConfigError, match="expected an nn.Linear"):
        SparseLinear.from_dense(nn.Conv2d(4, 4, 1))  # type: ignore[arg-type]
    pruned = nmsparse.prune_(nn.Sequential(nn.Linear(8, 8)), "2:4-T").model[0]
    with pytest.raises(ConfigError, match="pruned with 2:4-T, not 4:8-T"):
        SparseLinear.from_dense(pruned, pattern="4:8-T")
    with pytest.raises(ConfigError, match="static, not straight-through"):
        SparseLinear.from_dense(pruned, mode="straight-through")
    with pytest.raises(ConfigError, match="already has a mask"):
        SparseLinear.from_dense(pruned, mask=torch.ones(8, 8, dtype=torch.bool))


def test_constructor_errors() -> None:
    with pytest.raises(ConfigError, match="mode must be one of"):
        SparseLinear(8, 8, mode="dynamic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs mode='straight-through'"):
        SparseLinear(8, 8, decay=1e-3)
    with pytest.raises(ConfigError, match="backend must be one of"):
        SparseLinear(8, 8, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(MaskMismatchError, match="does not fit the weight"):
        SparseLinear(8, 8, mask=torch.ones(8, 4, dtype=torch.bool))
    with pytest.raises(MaskMismatchError, match="breaks pattern 2:4-T"):
        SparseLinear(8, 8, mask=torch.ones(8, 8, dtype=torch.bool))
    layer = SparseLinear(8, 8)
    with pytest.raises(InputError, match="does not match the weight dtype"):
        layer(torch.randn(2, 8, dtype=torch.float64))


def test_backend_sparse_raises_with_the_reason_on_cpu() -> None:
    layer = SparseLinear(128, 128, backend="sparse")
    with pytest.raises(BackendUnavailableError, match="no CUDA"):
        layer(torch.randn(2, 128))
    with pytest.raises(BackendUnavailableError, match="no CUDA"):
        layer.packed_weight(torch.bfloat16)


def test_reasons_name_the_missing_piece() -> None:
    assert "only 2:4-T" in sparse_unavailable_reason("cpu", torch.bfloat16, pattern="4:8-T")
    assert "no CUDA" in sparse_unavailable_reason("cpu", torch.bfloat16)
    assert SparseLinear(16, 8, backend="dense").sparse_reason.startswith("backend='dense'")
    if not torch.cuda.is_available():
        assert "no CUDA" in sparse_unavailable_reason("cuda", torch.bfloat16)


# ------------------------------------------------------------------- packing logic (CPU twin of torch's greedy)


def _random_masked(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    return w, nmsparse.find_mask(w, "2:4-T", method="exact")


@pytest.mark.parametrize("seed", range(3))
def test_greedy_keeps_exactly_the_mask_on_a_masked_weight(seed: int) -> None:
    w, mask = _random_masked(64, 128, seed)
    assert torch.equal(greedy_tile_keep(_masked_for_packing(w, mask, torch.float32)), mask)


def test_greedy_with_exact_zeros_still_packs_the_masked_weight() -> None:
    w, mask = _random_masked(64, 64, 3)
    w[mask & (torch.rand(w.shape) < 0.3)] = 0.0  # exact zeros at kept positions
    masked = _masked_for_packing(w, mask, torch.float32)
    keep = greedy_tile_keep(masked)
    assert not torch.equal(keep, mask), "zeros really move the greedy's choice (else this test proves nothing)"
    assert nmsparse.is_nm_sparse(keep, "2:4-T")
    assert torch.equal(torch.where(keep, masked, 0.0), masked), "every non-zero kept weight is packed"


def test_greedy_on_the_unmasked_master_weight_would_be_wrong() -> None:
    """Why packing applies the mask first: straight-through masters hold live values at pruned positions."""
    w, mask = _random_masked(64, 64, 4)
    w[~mask] *= 3.0  # pruned weights that grew since the last refresh
    assert not torch.equal(greedy_tile_keep(w), mask)
    assert torch.equal(greedy_tile_keep(_masked_for_packing(w, mask, torch.float32)), mask)


def test_masked_for_packing_keeps_non_finite_pruned_values_out() -> None:
    w, mask = _random_masked(8, 8, 5)
    w[~mask] = float("inf")
    out = _masked_for_packing(w, mask, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    assert bool(torch.isfinite(out).all()) and bool((out[~mask] == 0).all())


def test_greedy_twin_rejects_bad_shapes() -> None:
    with pytest.raises(InputError, match="multiples of 4"):
        greedy_tile_keep(torch.randn(6, 8))


# ------------------------------------------------------------------- sparse-path plumbing on CPU


@pytest.fixture
def fake_sparse(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Pretend the sparse path is available; 'packing' returns the masked dense matrix (same math)."""
    packed: list[torch.Tensor] = []

    def fake_pack(masked: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        packed.append(masked)
        return masked

    monkeypatch.setattr(linear_mod, "_pack", fake_pack)
    monkeypatch.setattr(linear_mod, "sparse_unavailable_reason", lambda *a, **k: None)
    return packed


@pytest.mark.parametrize("mode,decay", [("static", 0.0), ("straight-through", 0.03)])
def test_sparse_path_matches_reference_and_repacks_only_on_change(
    fake_sparse: list[torch.Tensor], mode: str, decay: float
) -> None:
    layer = SparseLinear(16, 8, mode=mode, decay=decay)
    ref = _reference(layer)
    x = torch.randn(3, 4, 16)
    _assert_same(_grads(layer, x), _grads(ref, x), rtol=1e-6, atol=1e-6)
    assert layer.repacks == 1 and torch.equal(fake_sparse[-1], layer.weight.detach() * layer.mask)
    layer(x)
    layer(x)
    assert layer.repacks == 1, "unchanged weight and mask: no re-pack"
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    layer(x)
    assert layer.repacks == 2, "an optimizer step bumps the weight's version: re-pack"
    layer.refresh_mask_()  # overwrites the mask in place (even with the same values): re-pack
    layer(x)
    assert layer.repacks == 3
    layer.invalidate_()
    layer(x)
    assert layer.repacks == 4


def test_sparse_path_under_no_grad_and_inference(fake_sparse: list[torch.Tensor]) -> None:
    layer = SparseLinear(16, 8)
    with torch.no_grad():
        y = layer(torch.randn(2, 16))
    assert not y.requires_grad and layer.repacks == 1


# ------------------------------------------------------------------- masks, state dicts, dynamic training


def test_refresh_mask_static_never_revives_and_straight_through_can() -> None:
    static = SparseLinear(8, 8)
    mask_obj = static.mask
    with torch.no_grad():
        static.weight[~static.mask] = 100.0
    assert static.refresh_mask_() == 0.0 and static.mask is mask_obj
    st = SparseLinear(8, 8, mode="straight-through")
    st_mask = st.mask
    with torch.no_grad():
        st.weight[~st.mask] = 100.0
    assert st.refresh_mask_() == 1.0, "every pruned weight is now larger than every kept one"
    assert st.mask is st_mask and nmsparse.is_nm_sparse(st.mask, "2:4-T")


def test_set_mask_checks_the_pattern() -> None:
    layer = SparseLinear(8, 8)
    with pytest.raises(MaskMismatchError, match="breaks pattern"):
        layer.set_mask_(torch.ones(8, 8))
    other = nmsparse.find_mask(torch.randn(8, 8), "2:4-T", method="exact")
    layer.set_mask_(other)
    assert torch.equal(layer.mask, other)


def test_state_dict_keys_match_a_pruned_linear_and_load_both_ways() -> None:
    model = nmsparse.prune_(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), "2:4-T").model
    accelerated = copy.deepcopy(model)
    accelerated[0] = SparseLinear.from_dense(accelerated[0])
    accelerated[2] = SparseLinear.from_dense(accelerated[2])
    plain, plain_pruned = accelerated.state_dict(), model.state_dict()  # the dense model's keys, effective weights
    assert list(plain) == list(plain_pruned) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for key in plain:
        assert torch.equal(plain[key], plain_pruned[key]), key
    with raw_state_dict():  # nmsparse's raw layout: the same keys either way
        pruned_sd, sd = model.state_dict(), accelerated.state_dict()
    assert list(sd) == list(pruned_sd)
    for key in sd:
        assert torch.equal(sd[key], pruned_sd[key]), key
    fresh = nmsparse.load_pruned_state_dict_(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), sd)
    x = torch.randn(3, 16)
    torch.testing.assert_close(fresh(x), accelerated(x))
    target = nn.Sequential(SparseLinear(16, 8), nn.ReLU(), SparseLinear(8, 4))
    target.load_state_dict(pruned_sd)
    torch.testing.assert_close(target(x), model(x))


def test_load_state_dict_names_missing_keys_and_bad_masks() -> None:
    layer = SparseLinear(8, 8)
    result = layer.load_state_dict({"bias": torch.zeros(8)}, strict=False)
    assert sorted(result.missing_keys) == ["parametrizations.weight.0.mask", "parametrizations.weight.original"]
    with raw_state_dict():
        bad = layer.state_dict()
    bad["parametrizations.weight.0.mask"] = torch.ones(8, 8, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="breaks pattern 2:4-T"):
        layer.load_state_dict(bad)


def test_dynamic_sparsifier_keeps_driving_the_swapped_layer() -> None:
    """Swap after DynamicSparsifier: its refreshes update the SparseLinear's shared mask; training is identical."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    twin = copy.deepcopy(base)
    sp_a = nmsparse.DynamicSparsifier(
        base, "2:4-T", initial_method="exact", method="exact", refresh_every=2, decay=1e-3
    )
    sp_b = nmsparse.DynamicSparsifier(
        twin, "2:4-T", initial_method="exact", method="exact", refresh_every=2, decay=1e-3
    )
    twin[0] = SparseLinear.from_dense(twin[0])
    twin[2] = SparseLinear.from_dense(twin[2])
    assert twin[0].mode == "straight-through" and twin[0].decay == 1e-3
    opt_a = torch.optim.SGD(base.parameters(), lr=0.5)
    opt_b = torch.optim.SGD(twin.parameters(), lr=0.5)
    data = [torch.randn(8, 16) for _ in range(6)]
    changed = False
    for x in data:
        for model, opt, sp in ((base, opt_a, sp_a), (twin, opt_b, sp_b)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            sp.step()
        changed = changed or sp_b.last_changed > 0
        torch.testing.assert_close(twin(x), base(x), rtol=1e-5, atol=1e-6)
        assert torch.equal(twin[0].mask, base[0].parametrizations.weight[0].mask)
    assert changed, "the masks changed at a refresh (else the test proves nothing)"
    sp_b.load_state_dict({**sp_b.state_dict(), "decay": 0.0})
    assert twin[0]._current_decay() == 0.0


def test_to_linear_bakes_the_mask() -> None:
    layer = SparseLinear(8, 4)
    plain = layer.to_linear()
    x = torch.randn(2, 8)
    torch.testing.assert_close(plain(x), layer(x))
    assert int((plain.weight != 0).sum()) <= int(layer.mask.sum())


def test_module_to_keeps_the_link_and_dtype_conversion() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    nmsparse.prune_(model, "2:4-T", straight_through=True)
    old = model[0]
    model[0] = SparseLinear.from_dense(old)
    model.to(torch.float64)
    assert model[0].weight.dtype == torch.float64 and model[0].mask.dtype == torch.bool
    assert model[0].mask is old.parametrizations.weight[0].mask
    y = model(torch.randn(2, 8, dtype=torch.float64))
    assert y.dtype == torch.float64


# ------------------------------------------------------------------- DDP (2 CPU processes, gloo)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from nmsparse.nn import SparseLinear
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    layer = SparseLinear(16, 8, mode="straight-through", decay=1e-3)
    model = DDP(layer)
    x = torch.randn(8, 16)
    part = x[rank * 4:(rank + 1) * 4]
    model(part).square().sum().backward()
    torch.save({"grad": layer.weight.grad, "x": x, "w": layer.weight.detach(), "b": layer.bias.detach(),
                "mask": layer.mask}, os.path.join(sys.argv[1], f"rank{rank}.pt"))
    dist.barrier()  # tearing gloo down while the other rank still works can abort it
    dist.destroy_process_group()
""")


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)
def test_ddp_averages_the_same_gradients(tmp_path: Path) -> None:
    script = tmp_path / "ddp_sparse_linear.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.testing.assert_close(r0["grad"], r1["grad"])
    # one process, full batch: DDP averages the two half-batch gradients of a sum loss -> half the full gradient
    layer = SparseLinear(16, 8, mode="straight-through", decay=1e-3, mask=r0["mask"])
    with torch.no_grad():
        layer.weight.copy_(r0["w"])
        layer.bias.copy_(r0["b"])
    ref = _reference(layer)
    ref(r0["x"]).square().sum().backward()
    decay_term = 1e-3 * (~layer.mask) * r0["w"]
    expected = (ref.parametrizations.weight.original.grad - decay_term) / 2 + decay_term
    torch.testing.assert_close(r0["grad"], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- CUDA (sparse tensor cores)


def _cuda_sparse_ready(dtype: torch.dtype = torch.bfloat16) -> str | None:
    return sparse_unavailable_reason("cuda", dtype, in_features=256, out_features=256)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode,decay", [("static", 0.0), ("straight-through", 1e-3)])
def test_cuda_sparse_path_matches_masked_dense(dtype: torch.dtype, mode: str, decay: float) -> None:
    reason = _cuda_sparse_ready(dtype)
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(0)
    layer = SparseLinear(512, 256, mode=mode, decay=decay, device="cuda", dtype=dtype)
    assert layer.sparse_reason is None
    ref = _reference(layer)
    x = torch.randn(4, 96, 512, device="cuda", dtype=dtype)
    got, want = _grads(layer, x), _grads(ref, x)
    assert layer.repacks == 1
    for name, a, b in zip(("y", "dx", "dw", "db"), got, want):
        err = float((a.float() - b.float()).norm() / b.float().norm())
        assert err < 1e-2, f"{name}: relative error {err:.2e}"


@pytest.mark.gpu
def test_cuda_packed_weight_is_exactly_the_masked_weight_even_with_zeros() -> None:
    reason = _cuda_sparse_ready()
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(1)
    layer = SparseLinear(256, 384, mode="straight-through", device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight[layer.mask & (torch.rand_like(layer.weight) < 0.2)] = 0.0
        layer.weight[~layer.mask] *= 4.0
    masked = torch.where(layer.mask, layer.weight, 0).detach()
    packed = layer.packed_weight(torch.bfloat16)
    eye_in = torch.eye(256, device="cuda", dtype=torch.bfloat16)
    eye_out = torch.eye(384, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(torch.nn.functional.linear(eye_in, packed), masked.t()), "forward operand"
    assert torch.equal(torch.mm(eye_out, packed), masked), "dX operand (packed W^T)"


@pytest.mark.gpu
def test_cuda_training_follows_the_masked_dense_loss_curve() -> None:
    reason = _cuda_sparse_ready()
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(2)
    dims = 256
    make = lambda: nn.Sequential(nn.Linear(dims, 4 * dims), nn.GELU(), nn.Linear(4 * dims, dims))  # noqa: E731
    dense = make().cuda().to(torch.bfloat16)
    sparse = copy.deepcopy(dense)
    sparsifiers = {
        "dense": nmsparse.DynamicSparsifier(dense, "2:4-T", initial_method="exact", refresh_every=40),
        "sparse": nmsparse.DynamicSparsifier(sparse, "2:4-T", initial_method="exact", refresh_every=40),
    }
    sparse[0] = SparseLinear.from_dense(sparse[0])
    sparse[2] = SparseLinear.from_dense(sparse[2])
    assert sparse[0].sparse_reason is None
    target = torch.randn(256, dims, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(256, dims, device="cuda", dtype=torch.bfloat16)
    losses = {}
    for name, model in (("dense", dense), ("sparse", sparse)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        curve = []
        for _ in range(200):
            opt.zero_grad()
            loss = (model(x) - target).float().square().mean()
            loss.backward()
            opt.step()
            sparsifiers[name].step()
            curve.append(float(loss))
        losses[name] = curve
    assert sparse[0].repacks >= 200
    assert losses["sparse"][-1] < 0.7 * losses["sparse"][0]
    assert abs(losses["sparse"][-1] - losses["dense"][-1]) <= 0.1 * losses["dense"][-1] + 1e-3


def test_sparse_path_under_autocast_packs_the_autocast_dtype(fake_sparse: list[torch.Tensor]) -> None:
    layer = SparseLinear(16, 8, mode="straight-through", decay=0.01)
    ref = _reference(layer)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(layer, x)
        want = _grads(ref, x)
    assert fake_sparse[-1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    _assert_same(got, want, rtol=1e-2, atol=1e-2)
    layer(x)  # fp32 now: another dtype, another pack
    assert layer.repacks == 2 and fake_sparse[-1].dtype == torch.float32


@pytest.mark.gpu
def test_cuda_greedy_packer_agrees_with_its_torch_twin() -> None:
    """torch's largest_abs_values_greedy tile kernel keeps what greedy_tile_keep keeps (no ties, no zeros)."""
    reason = _cuda_sparse_ready()
    if reason is not None:
        pytest.skip(reason)
    gen = torch.Generator().manual_seed(3)
    rows, cols = 256, 384
    # distinct magnitudes 1..16 in every 4x4 tile (exact in bf16), random signs: no ties, no zeros
    tiles = torch.stack([torch.randperm(16, generator=gen) + 1 for _ in range(rows * cols // 16)]).float()
    signs = torch.where(torch.rand(tiles.shape, generator=gen) < 0.5, -1.0, 1.0)
    w = (tiles * signs).reshape(rows // 4, cols // 4, 4, 4).permute(0, 2, 1, 3).reshape(rows, cols)
    packed = linear_mod._pack(w.to(device="cuda", dtype=torch.bfloat16).contiguous())
    eye = torch.eye(cols, device="cuda", dtype=torch.bfloat16)
    kept = torch.nn.functional.linear(eye, packed).t().float().cpu()  # = the packed (pruned) matrix
    assert torch.equal(kept != 0, greedy_tile_keep(w))
    assert torch.equal(kept[kept != 0], w[kept != 0])
