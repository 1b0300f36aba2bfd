"""``nmsparse oneshot``: a transformers folder in, a pruned transformers folder and a report out."""

from __future__ import annotations

import json

import pytest
import torch

from nmsparse.cli.main import main
from nmsparse.testing import tiny_llama

transformers = pytest.importorskip("transformers")


def _gpt2_folder(path):
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=256, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(path))
    return path


def test_missing_model_folder_is_a_one_line_error(tmp_path, capsys):
    code = main(["oneshot", "--model", str(tmp_path / "nope"), "--pattern", "2:4", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no transformers folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_existing_out_needs_overwrite(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    code = main(["oneshot", "--model", str(tmp_path), "--pattern", "2:4", "--out", str(tmp_path / "o")])
    assert code == 2 and "--overwrite" in capsys.readouterr().err


def test_bad_generated_flag_is_refused(tmp_path, capsys):
    code = main(
        ["oneshot", "--model", str(tmp_path), "--pattern", "2:4", "--out", str(tmp_path / "o"), "--damping", "-1"]
    )
    assert code == 2 and "damping" in capsys.readouterr().err


@pytest.mark.slow
def test_oneshot_command_on_a_gpt2_folder(tmp_path, capsys):
    from nmsparse.io import MASKS_FILE, load_masks
    from nmsparse.testing import assert_valid_mask

    source = _gpt2_folder(tmp_path / "gpt2")
    out = tmp_path / "pruned"
    code = main(
        [
            "oneshot",
            "--model",
            f"hf:{source}",
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4-T",
            "--out",
            str(out),
            "--calibration-samples",
            "8",
            "--context",
            "32",
            "--eval-tokens",
            "1024",
            "--damping",
            "0.02",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "held-out perplexity" in printed
    summary = json.loads((out / "oneshot.json").read_text())
    assert summary["config"]["options"]["damping"] == 0.02 and summary["pattern"] == "2:4-T"
    assert summary["perplexity"]["dense"] > 1 and summary["perplexity"]["pruned"] > 1
    assert len(summary["report"]["layers"]) == 8
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    masks = load_masks(out / MASKS_FILE)
    assert len(masks) == 8
    for key, mask in masks.items():
        weight = model.get_parameter(key)
        assert bool((weight[~mask] == 0).all())
        assert_valid_mask(mask.T, "2:4-T", exact_n=True)  # GPT-2's Conv1D stores [in, out]
    assert main(["oneshot", "--model", f"hf:{source}", "--pattern", "2:4", "--out", str(out)]) == 2


def test_command_module_imports_in_a_fresh_process():
    """Importing nmsparse.io before nmsparse.prune is circular; the command must not depend on import order."""
    import subprocess
    import sys

    for module in ("nmsparse.cli.oneshot", "nmsparse.hf"):
        result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]


def test_algorithm_and_its_options_are_flags_and_foreign_options_are_refused(tmp_path):
    from nmsparse.cli.main import build_parser
    from nmsparse.cli.oneshot import config_from_flags
    from nmsparse.errors import ConfigError

    parser = build_parser()
    base = ["oneshot", "--pattern", "2:4", "--out", str(tmp_path / "o")]
    config = config_from_flags(
        parser.parse_args([*base, "--algorithm", "adaprune", "--iterations", "7", "--memory-budget", "2GiB"])
    )
    assert config.algorithm == "adaprune" and config.method_options().iterations == 7
    assert config.memory_bytes == 2 << 30
    old = config_from_flags(parser.parse_args([*base, "--method", "wanda"]))  # the old spelling of --algorithm
    assert old.algorithm == "wanda" and old.method == "auto"
    solver = config_from_flags(parser.parse_args([*base, "--method", "exact"]))  # --method is the mask solver
    assert solver.algorithm == "sparsegpt" and solver.method == "exact"
    with pytest.raises(ConfigError, match="--block-size flag does not apply to --algorithm adaprune"):
        config_from_flags(parser.parse_args([*base, "--algorithm", "adaprune", "--block-size", "4"]))
    for algorithm in ("sparsegpt", "wanda"):  # one --refit flag for both methods that have the option
        refit = config_from_flags(parser.parse_args([*base, "--algorithm", algorithm, "--refit", "5"]))
        assert refit.method_options().refit == 5
    with pytest.raises(ConfigError, match="--refit flag does not apply to --algorithm magnitude"):
        config_from_flags(parser.parse_args([*base, "--algorithm", "magnitude", "--refit", "5"]))


def test_negative_refit_is_a_one_line_error(tmp_path, capsys):
    args = ["oneshot", "--model", str(tmp_path), "--pattern", "2:4-T", "--out", str(tmp_path / "o")]
    code = main([*args, "--algorithm", "wanda", "--refit", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "refit" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_permute_flags_report_and_reload(tmp_path, capsys, monkeypatch):
    """``--permute`` (with ``--refit``): the summary and options are printed and recorded; the folder is an ordinary
    transformers folder."""
    import functools

    import nmsparse.cli.oneshot as command
    import nmsparse.permute as permute_module
    from nmsparse.io import MASKS_FILE, load_masks

    monkeypatch.setattr(  # the tests' small search effort (the CLI calls permute_ at run time)
        permute_module, "permute_", functools.partial(permute_module.permute_, rounds=2, exact_rounds=1, sweeps=0)
    )
    tokens = torch.randint(0, 256, (2048,), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(command, "_streams", lambda tokenizer, data=None: (tokens[:1536], tokens[1536:], {}))
    source = tmp_path / "llama"
    llama = tiny_llama(num_attention_heads=4, num_key_value_heads=2, vocab_size=256, pad_token_id=0)
    llama.save_pretrained(str(source))
    out = tmp_path / "pruned"
    args = ["oneshot", "--model", f"hf:{source}", "--algorithm", "wanda", "--pattern", "2:4", "--out", str(out)]
    flags = ["--calibration-samples", "2", "--context", "16", "--eval-tokens", "64", "--threads", "1", "--no-progress"]
    code = main([*args, *flags, "--permute", "--permute-residual", "--refit", "3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "permute_ 2:4 (wanda scores)" in printed
    summary = json.loads((out / "oneshot.json").read_text())
    assert summary["config"]["permute"] is True and summary["config"]["permute_residual"] is True
    permutation = summary["report"]["permutation"]
    assert "residual" in {c["name"] for c in permutation["chains"]} and permutation["layers"]
    record = json.loads((out / "nmsparse.json").read_text())
    assert record["metadata"]["oneshot"]["permutation"]["scores"] == "wanda"
    assert record["metadata"]["oneshot"]["options"]["refit"] == 3  # the weights are re-fitted, not Wanda's
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))  # permutation baked into the weights
    for key, mask in load_masks(out / MASKS_FILE).items():
        assert bool((model.get_parameter(key)[~mask] == 0).all())
    ids = torch.randint(0, 256, (1, 16))
    assert torch.isfinite(model(ids).logits).all()
    code = main([*args, "--overwrite", *flags, "--permute-scores", "magnitude"])  # needs --permute
    assert code == 2 and "needs permute=True" in capsys.readouterr().err
