"""SparseLinear's direct cuSPARSELt route (issue 18), exercised on CPU with a stand-in for ``torch._cslt_sparse_mm``.

The stand-in computes what cuSPARSELt computes, ``A @ B (+ bias per row of A)``, transposed when asked, from a
"packed" object that carries the masked ``W`` and ``W^T`` as its ``packed`` / ``packed_t`` tensors. The real op
runs in the ``gpu`` tests and in ``benchmarks/bench_anatomy.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nmsparse.nn import SparseLinear
from nmsparse.nn import linear as linear_mod
from nmsparse.testing import masked_linear_twin


class FakePacked:
    """What the direct route reads from torch's packed tensor: the raw operands of ``W`` and ``W^T``."""

    def __init__(self, masked: torch.Tensor) -> None:
        self.packed = masked
        self.packed_t = masked.t().contiguous()


@pytest.fixture
def fake_direct(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {"mm": [], "search": [], "pack": []}

    def fake_pack(masked: torch.Tensor, mask: torch.Tensor | None = None) -> FakePacked:
        calls["pack"].append(masked)
        return FakePacked(masked)

    def fake_mm(
        a: torch.Tensor,
        b: torch.Tensor,
        bias: torch.Tensor | None = None,
        alpha: Any = None,
        out_dtype: Any = None,
        transpose_result: bool = False,
        alg_id: int = 0,
        **_: Any,
    ) -> torch.Tensor:
        calls["mm"].append(
            {
                "a": tuple(a.shape),
                "b": tuple(b.shape),
                "b_transposed_view": not b.is_contiguous(),
                "transpose_result": transpose_result,
                "alg_id": alg_id,
            }
        )
        out = a @ b
        if bias is not None:
            out = out + bias[:, None]
        return out.t().contiguous() if transpose_result else out

    def fake_search(
        a: torch.Tensor,
        b: torch.Tensor,
        bias: torch.Tensor | None = None,
        alpha: Any = None,
        out_dtype: Any = None,
        transpose_result: bool = False,
    ) -> int:
        calls["search"].append((tuple(a.shape), tuple(b.shape), transpose_result))
        return 3

    monkeypatch.setattr(linear_mod, "_pack", fake_pack)
    monkeypatch.setattr(linear_mod, "sparse_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr(linear_mod, "direct_cslt_reason", lambda *a, **k: None)
    monkeypatch.setattr(linear_mod, "_ALG_CACHE", {})
    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake_mm, raising=False)
    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", fake_search, raising=False)
    return calls


def _reference(layer: SparseLinear) -> torch.nn.Linear:
    return masked_linear_twin(layer)


def _grads(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y)).sum().backward()
    w = module.weight if isinstance(module, SparseLinear) else module.parametrizations.weight.original
    return y.detach(), x.grad, w.grad, module.bias.grad


@pytest.mark.parametrize("mode,decay", [("static", 0.0), ("straight-through", 0.03)])
def test_direct_route_matches_masked_dense_pads_rows_and_caches_the_algorithm(
    fake_direct: dict[str, list[Any]], mode: str, decay: float
) -> None:
    torch.manual_seed(0)
    layer = SparseLinear(16, 8, mode=mode, decay=decay)
    ref = _reference(layer)
    x = torch.randn(3, 5, 16)  # 15 tokens: padded to 16 rows for cuSPARSELt
    got, want = _grads(layer, x), _grads(ref, x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert got[0].is_contiguous() and got[1].is_contiguous()
    forward, dx = fake_direct["mm"]
    assert forward == {"a": (8, 16), "b": (16, 16), "b_transposed_view": True, "transpose_result": True, "alg_id": 3}
    assert dx == {"a": (16, 8), "b": (8, 16), "b_transposed_view": True, "transpose_result": True, "alg_id": 3}
    assert len(fake_direct["search"]) == 2, "one search per product shape"
    _grads(layer, x)
    assert len(fake_direct["search"]) == 2, "the algorithm choice is cached per shape"
    assert layer.repacks == 1
    _grads(layer, torch.randn(32, 16))
    assert len(fake_direct["search"]) == 4, "a new token count is a new shape"


def test_a_rejected_algorithm_falls_back_to_the_default(
    fake_direct: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch._cslt_sparse_mm

    def picky(*args: Any, alg_id: int = 0, **kwargs: Any) -> torch.Tensor:
        if alg_id:
            raise RuntimeError("CUSPARSE_STATUS_INVALID_VALUE")
        return real(*args, alg_id=alg_id, **kwargs)

    monkeypatch.setattr(torch, "_cslt_sparse_mm", picky)
    layer = SparseLinear(16, 8)
    x = torch.randn(8, 16)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight * layer.mask, layer.bias))
    assert set(linear_mod._ALG_CACHE.values()) == {0}
    assert SparseLinear._forward_eager(layer, x).shape == (8, 8) and layer._forward_eager(x).shape == (8, 8)


def test_algorithm_search_failure_uses_the_default(
    fake_direct: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("no search here")

    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", broken)
    layer = SparseLinear(16, 8)
    layer(torch.randn(8, 16))
    assert fake_direct["mm"][-1]["alg_id"] == 0
    monkeypatch.setattr(linear_mod, "ALGORITHM_SEARCH", False)
    linear_mod._ALG_CACHE.clear()
    layer(torch.randn(8, 16))
    assert fake_direct["mm"][-1]["alg_id"] == 0 and not fake_direct["search"]


def test_class_route_stays_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packed objects without raw operands, or a failed direct probe, run through the tensor subclass."""
    assert not linear_mod._is_direct(torch.zeros(2, 2)) and linear_mod._is_direct(FakePacked(torch.zeros(4, 4)))
    assert linear_mod.direct_cslt_reason("cpu", torch.bfloat16).startswith("no CUDA")
    monkeypatch.setattr(linear_mod, "DIRECT_CSLT", False)
    assert "DIRECT_CSLT" in linear_mod.direct_cslt_reason("cuda", torch.bfloat16)
    routes: list[bool] = []
    monkeypatch.setattr(linear_mod, "_pack", lambda masked, mask=None: FakePacked(masked))
    monkeypatch.setattr(linear_mod, "sparse_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr(linear_mod, "direct_cslt_reason", lambda *a, **k: "probe failed")

    def fake_apply(*args: Any) -> torch.Tensor:
        routes.append(bool(args[4][1]))
        return torch.zeros(2, 8)

    monkeypatch.setattr(linear_mod._SparseLinearFunction, "apply", fake_apply)
    SparseLinear(16, 8)(torch.randn(2, 16))
    assert routes == [False]


def test_repack_key_survives_inference_mode(fake_direct: dict[str, list[Any]]) -> None:
    layer = SparseLinear(16, 8)
    with torch.inference_mode():
        layer.to(torch.float64)  # inference tensors: no version counter
        assert layer.weight.is_inference()
        x = torch.randn(4, 16, dtype=torch.float64)
        y = layer(x)
        layer(x)
        assert layer.repacks == 1
        layer.invalidate_()
        layer(x)
        assert layer.repacks == 2
        torch.testing.assert_close(y, torch.nn.functional.linear(x, layer.weight * layer.mask, layer.bias))


def test_cuda_forward_runs_outside_torch_compile_and_cpu_compiles() -> None:
    assert getattr(linear_mod._eager_forward(), "_torchdynamo_disable", False)
    layer = SparseLinear(16, 8)
    x = torch.randn(4, 16)
    compiled = torch.compile(layer, backend="eager")
    torch.testing.assert_close(compiled(x), layer(x))


# ------------------------------------------------------------------- CUDA: the real op


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [96, 100])  # 100: not a multiple of 8, padded
def test_cuda_direct_route_matches_the_class_route_and_masked_dense(tokens: int) -> None:
    reason = linear_mod.sparse_unavailable_reason("cuda", torch.bfloat16, in_features=256, out_features=384)
    if reason is not None:
        pytest.skip(reason)
    assert linear_mod.direct_cslt_reason("cuda", torch.bfloat16) is None
    torch.manual_seed(0)
    layer = SparseLinear(256, 384, mode="straight-through", decay=1e-3, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
    direct = _grads(layer, x)
    assert direct[0].is_contiguous() and direct[1].is_contiguous()
    layer.weight.grad = layer.bias.grad = None
    try:
        linear_mod.DIRECT_CSLT = False
        linear_mod._DIRECT_CACHE.clear()
        through_class = _grads(layer, x)
    finally:
        linear_mod.DIRECT_CSLT = True
        linear_mod._DIRECT_CACHE.clear()
    ref = _reference(layer.float().cpu())
    want = _grads(ref, x.float().cpu())
    for name, a, b, c in zip(("y", "dx", "dw", "db"), direct, through_class, want):
        assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2), name
        err = float((a.float().cpu() - c).norm() / c.norm())
        assert err < 2e-2, f"{name}: relative error {err:.2e}"
