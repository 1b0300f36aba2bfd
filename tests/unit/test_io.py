import pytest
import torch
from safetensors.torch import save_file

from nmsparse.errors import InputError
from nmsparse.io import atomic_path, load_masks, load_state_dict, read_metadata, save_masks


def test_load_pt_safetensors_and_nested(tmp_path):
    sd = {"a.weight": torch.randn(4, 8), "a.bias": torch.randn(4)}
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "nested.pth")
    save_file(sd, str(tmp_path / "x.safetensors"))
    for name in ("plain.pt", "nested.pth", "x.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert set(loaded) == set(sd) and torch.equal(loaded["a.weight"], sd["a.weight"])


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_with_objects_is_refused(tmp_path, capsys):
    torch.save({"w": torch.ones(2), "obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="weights_only=True"):
        load_state_dict(tmp_path / "evil.pt")
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, name, match",
    [
        (None, "missing.pt", "does not exist"),
        (b"not a checkpoint", "corrupt.pt", "cannot be loaded"),
        (b"\x00\x01garbage", "corrupt.safetensors", "not a readable safetensors"),
        (b"x", "weights.npz", "unknown checkpoint suffix"),
    ],
)
def test_bad_files(tmp_path, content, name, match):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_state_dict(tmp_path / name)


def test_no_tensors(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(InputError, match="no tensors"):
        load_state_dict(tmp_path / "empty.pt")


def test_masks_round_trip_with_metadata(tmp_path):
    masks = {"fc.weight": torch.rand(4, 8) > 0.5}
    save_masks(masks, tmp_path / "m.safetensors", pattern="2:4", metadata={"method": "topn"})
    loaded = load_masks(tmp_path / "m.safetensors")
    meta = read_metadata(tmp_path / "m.safetensors")
    assert torch.equal(loaded["fc.weight"], masks["fc.weight"]) and loaded["fc.weight"].dtype == torch.bool
    assert meta["pattern"] == "2:4" and meta["method"] == "topn"
    assert meta["format"] == "nmsparse/1" and meta["kind"] == "masks"


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# ------------------------------------------------------------------------------------------- contract 2

import json  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402

from torch import nn  # noqa: E402

import nmsparse  # noqa: E402
from nmsparse.errors import MaskMismatchError, OverwriteError  # noqa: E402
from nmsparse.io import (  # noqa: E402
    FORMAT,
    MASK_PREFIX,
    export_dense,
    load_pruned_,
    load_pruned_state_dict_,
    pruned_state_dict,
    save_dense,
    save_pruned,
    write_text_atomic,
)
from nmsparse.nn.state import raw_state_dict  # noqa: E402


def raw_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """nmsparse's raw layout of a pruned model's state (what older writers saved)."""
    with raw_state_dict():
        return model.state_dict()


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    # Regression: mkstemp's private 0600 leaked into every file written through the atomic writer
    with open(tmp_path / "reference.txt", "w") as handle:
        handle.write("x")
    expected = stat.S_IMODE(os.stat(tmp_path / "reference.txt").st_mode)
    assert expected == 0o666 & ~umask
    model = nmsparse.prune_(_mlp(), "2:4").model
    written = [
        write_text_atomic(tmp_path / "a.txt", "hello"),
        save_masks(nmsparse.get_masks(model), tmp_path / "m.safetensors"),
        save_pruned(model, tmp_path / "p.safetensors"),
        save_dense(model, tmp_path / "d.safetensors", masks_path=tmp_path / "dm.safetensors"),
        tmp_path / "dm.safetensors",
    ]
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"1")
    written.append(tmp_path / "b.bin")
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_overwrite_false_refuses_an_existing_file_and_keeps_it(tmp_path):
    model = nmsparse.prune_(_mlp(), "2:4").model
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"user data")
    for call in (
        lambda: save_masks(nmsparse.get_masks(model), target),
        lambda: save_pruned(model, target),
        lambda: save_dense(model, target),
        lambda: write_text_atomic(target, "x", overwrite=False),
    ):
        with pytest.raises(OverwriteError, match="overwrite=True"):
            call()
        assert target.read_bytes() == b"user data"
    assert isinstance(OverwriteError("x"), FileExistsError)
    save_masks(nmsparse.get_masks(model), target, overwrite=True)
    assert set(load_masks(target)) == {"0.weight", "2.weight"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_pruned_state_dict_layout_and_round_trip(tmp_path):
    model = nmsparse.prune_(_mlp(), "4:8-T", method="greedy").model
    tensors, meta = pruned_state_dict(model)
    assert set(tensors) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        MASK_PREFIX + "0.weight",
        MASK_PREFIX + "2.weight",
    }
    assert torch.equal(tensors["0.weight"], model[0].parametrizations.weight.original)  # dense master weight
    assert meta["format"] == FORMAT == "nmsparse/1" and meta["kind"] == "pruned"
    assert json.loads(meta["masks"])["0.weight"]["pattern"] == "4:8-T"
    assert json.loads(meta["masks"])["0.weight"]["mode"] == "static"

    path = save_pruned(model, tmp_path / "model.safetensors", metadata={"epoch": 3})
    assert read_metadata(path)["epoch"] == "3"
    fresh = load_pruned_(_mlp(), path)
    x = torch.randn(4, 16)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert set(nmsparse.get_masks(fresh)) == {"0.weight", "2.weight"}
    assert set(load_masks(path)) == {"0.weight", "2.weight"}  # the masks of a pruned checkpoint, ready for set_masks_


def test_pattern_and_mode_survive_a_reload(tmp_path):
    # Regression: after a reload set_masks_ accepted an all-True mask on a 4:8-T model
    model = nmsparse.DynamicSparsifier(_mlp(), "4:8-T", initial_method="greedy", decay=1e-3).model
    all_true = {"0.weight": torch.ones(16, 16, dtype=torch.bool)}
    reloaded = [
        load_pruned_state_dict_(_mlp(), raw_state(model)),  # raw state dict
        load_pruned_(_mlp(), save_pruned(model, tmp_path / "p.safetensors")),
    ]
    for fresh in reloaded:
        nm = fresh[0].parametrizations.weight[0]
        assert str(nm.pattern) == "4:8-T" and nm.straight_through and nm.decay == 1e-3
        with pytest.raises(MaskMismatchError, match="wrong pattern"):
            nmsparse.set_masks_(fresh, all_true, strict=False)
    twin = nmsparse.prune_(_mlp(), "2:4").model  # another pattern: load_state_dict brings 4:8-T with the raw state
    twin.load_state_dict(raw_state(model))
    assert str(twin[0].parametrizations.weight[0].pattern) == "4:8-T"
    with pytest.raises(MaskMismatchError, match="wrong pattern"):
        nmsparse.set_masks_(twin, all_true, strict=False)


def test_export_dense_loads_into_a_plain_model(tmp_path):
    # Regression: a pruned model's weights needed five manual steps to become a normal state dict
    model = nmsparse.prune_(_mlp(), "2:4").model
    x = torch.randn(3, 16)
    plain = _mlp()
    plain.load_state_dict(export_dense(model))  # strict
    torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)
    path = save_dense(model, tmp_path / "dense.safetensors", masks_path=tmp_path / "masks.safetensors")
    other = _mlp()
    other.load_state_dict(load_state_dict(path))
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert read_metadata(path)["kind"] == "dense"
    assert json.loads(read_metadata(path)["masks"])["2.weight"]["pattern"] == "2:4"
    assert nmsparse.is_pruned(model[0])  # the model itself is unchanged
    again = nmsparse.prune_(_mlp(), "2:4").model
    nmsparse.set_masks_(again, load_masks(tmp_path / "masks.safetensors"))


def test_load_pruned_refuses_a_masks_file_and_names_mismatches(tmp_path):
    model = nmsparse.prune_(_mlp(), "2:4").model
    masks_path = save_masks(nmsparse.get_masks(model), tmp_path / "m.safetensors")
    with pytest.raises(InputError, match="kind='masks'"):
        load_pruned_(_mlp(), masks_path)
    tensors, meta = pruned_state_dict(model)
    tensors[MASK_PREFIX + "9.weight"] = torch.ones(2, 2, dtype=torch.bool)
    del tensors["2.weight"]
    fresh = _mlp()
    with pytest.raises(MaskMismatchError) as info:
        load_pruned_state_dict_(fresh, tensors, meta)
    assert "no layer '9'" in str(info.value) and "missing: '2.weight'" in str(info.value)
    assert not any(nmsparse.is_pruned(m) for m in fresh.modules())


def test_pruning_keeps_the_parameter_order_for_optimizer_state():
    # Regression: parametrizing moved each weight behind its bias, so Adam state saved before pruning did not
    # load into an optimizer built after (size mismatch), and the ASP workflow relied on an accident
    model = _mlp()
    names = [n for n, _ in model.named_parameters()]
    before = [p for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    nmsparse.prune_(model, "2:4")
    assert [id(p) for p in model.parameters()] == [id(p) for p in before]
    assert len(names) == len(list(model.named_parameters()))
    after = torch.optim.Adam(model.parameters(), lr=1e-3)
    after.load_state_dict(saved)
    model(torch.randn(2, 16)).sum().backward()
    after.step()  # a size mismatch raised here before the fix
    opt.zero_grad()
    model(torch.randn(2, 16)).sum().backward()
    opt.step()  # ASP workflow: the optimizer built before pruning keeps working on the same parameters
    nmsparse.squash_masks_(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in before]
    assert [n for n, _ in model.named_parameters()] == names


def test_raw_checkpoints_of_older_writers_still_load(tmp_path):
    from safetensors.torch import save_file

    model = nmsparse.prune_(_mlp(), "2:4").model
    raw = {k: v.contiguous() for k, v in raw_state(model).items()}
    save_file(raw, str(tmp_path / "old.safetensors"), metadata={"format": "nmsparse.recipes.train.model"})
    fresh = load_pruned_(_mlp(), tmp_path / "old.safetensors")
    assert str(fresh[0].parametrizations.weight[0].pattern) == "2:4"
    # without the extra state (nmsparse before the pattern travelled with the module): static, no pattern
    legacy = {k: v for k, v in raw.items() if not k.endswith("_extra_state")}
    legacy = {k.replace("parametrizations.bias.original", "bias"): v for k, v in legacy.items()}
    older = load_pruned_state_dict_(_mlp(), legacy)
    assert older[0].parametrizations.weight[0].pattern is None
    torch.testing.assert_close(older(torch.ones(1, 16)), model(torch.ones(1, 16)), rtol=0, atol=0)
    with pytest.raises(InputError, match="nmsparse/9"):
        load_pruned_state_dict_(_mlp(), raw, {"format": "nmsparse/9", "kind": "pruned"})


def test_save_pretrained_dense_leaves_the_model_pruned_and_working(tmp_path):
    transformers = pytest.importorskip("transformers")
    from nmsparse.io import MASKS_FILE, save_pretrained_dense
    from nmsparse.testing import tiny_gpt2

    model = nmsparse.prune_(tiny_gpt2(), "2:4-T", method="greedy").model
    ids = torch.randint(0, 64, (1, 8))
    expected = model(ids).logits
    save_pretrained_dense(model, tmp_path / "out", metadata={"note": "x"})
    # squashing a deep copy would have removed the weight property from the class the copy shares with model
    assert nmsparse.is_pruned(model.transformer.h[0].mlp.c_fc)
    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    assert set(load_masks(tmp_path / "out" / MASKS_FILE)) == set(nmsparse.get_masks(model))
    with pytest.raises(OverwriteError):
        save_pretrained_dense(model, tmp_path / "out")
    save_pretrained_dense(model, tmp_path / "out", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
