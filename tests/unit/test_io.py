import pytest
import torch
from safetensors.torch import save_file

from nmsparse.errors import InputError
from nmsparse.io import atomic_path, load_masks, load_state_dict, save_masks


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


@pytest.mark.parametrize("content, name, match", [
    (None, "missing.pt", "does not exist"),
    (b"not a checkpoint", "corrupt.pt", "cannot be loaded"),
    (b"\x00\x01garbage", "corrupt.safetensors", "not a readable safetensors"),
    (b"x", "weights.npz", "unknown checkpoint suffix"),
])
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
    save_masks(masks, tmp_path / "m.safetensors", metadata={"pattern": "2:4", "method": "topn"})
    loaded, meta = load_masks(tmp_path / "m.safetensors")
    assert torch.equal(loaded["fc.weight"], masks["fc.weight"]) and loaded["fc.weight"].dtype == torch.bool
    assert meta["pattern"] == "2:4" and meta["method"] == "topn" and meta["format"] == "nmsparse.masks"


def test_atomic_path_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
