"""Mask diversity: exact counts vs brute force and known values, the estimate's accuracy, errors, the CLI."""

from __future__ import annotations

import functools
import itertools
import json
import math
import time

import numpy as np
import pytest
import torch

import nmsparse
from nmsparse.cli import diversity as cli_diversity
from nmsparse.cli.main import main
from nmsparse.diversity import (
    MAX_EXACT_TRANSPOSABLE_M,
    _count_regular,
    _tau,
    diversity_summary,
    estimate_log10_mask_diversity,
    estimate_log10_transposable_block_count,
    log10_mask_diversity,
    mask_diversity,
    paper_closed_form_transposable,
    transposable_block_count,
)
from nmsparse.errors import ConfigError, NMSparseError, PatternError, ShapeError
from nmsparse.metrics import nm_counts

# ----------------------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------------------


def brute_force_tau(m: int, n: int) -> int:
    """Count m x m 0/1 matrices with n ones per row and column by enumeration (m <= 5)."""
    if m <= 4:  # every one of the 2**(m*m) matrices
        bits = np.arange(1 << (m * m), dtype=np.int64)
        mats = ((bits[:, None] >> np.arange(m * m)) & 1).reshape(-1, m, m)
    else:  # every choice of a row with n ones, for each of the m rows
        row_choices = np.array([[int(j in cols) for j in range(m)] for cols in itertools.combinations(range(m), n)])
        picks = np.stack(np.meshgrid(*[np.arange(len(row_choices))] * m, indexing="ij"), -1).reshape(-1, m)
        mats = row_choices[picks]  # (choices**m, m, m)
    ok = (mats.sum(axis=2) == n).all(axis=1) & (mats.sum(axis=1) == n).all(axis=1)
    return int(ok.sum())


def recursive_tau(m: int, n: int) -> int:
    """Row by row over specific column sets, memoised on sorted column needs (no class DP, no symmetry)."""

    @functools.cache
    def fill(rows_left: int, needs: tuple[int, ...]) -> int:
        if rows_left == 0:
            return int(not any(needs))
        if max(needs) > rows_left:
            return 0
        total = 0
        for cols in itertools.combinations(range(m), n):
            if all(needs[c] for c in cols):
                new = list(needs)
                for c in cols:
                    new[c] -= 1
                total += fill(rows_left - 1, tuple(sorted(new)))
        return total

    return fill(m, (n,) * m)


# OEIS A001499 (2 per row and column), A001501 (3), A058528 (4); index = m.
KNOWN = {
    2: {2: 1, 3: 6, 4: 90, 5: 2040, 6: 67950, 7: 3110940, 8: 187530840},
    3: {3: 1, 4: 24, 5: 2040, 6: 297200, 7: 68938800, 8: 24046189440},
    4: {4: 1, 5: 120, 6: 67950, 7: 68938800, 8: 116963796250},
}


# ----------------------------------------------------------------------------------------------------------
# tau(m, n)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_tau_matches_brute_force_enumeration(m: int) -> None:
    for n in range(m + 1):
        assert transposable_block_count(m, n) == brute_force_tau(m, n), (m, n)


@pytest.mark.parametrize("m", [6, 7, 8])
def test_tau_matches_independent_recursion(m: int) -> None:
    for n in range(m + 1):
        assert transposable_block_count(m, n) == recursive_tau(m, n), (m, n)


def test_tau_known_values() -> None:
    assert transposable_block_count(4, 2) == 90
    assert transposable_block_count(8, 4) == 116_963_796_250
    for n, by_m in KNOWN.items():
        for m, value in by_m.items():
            assert transposable_block_count(m, n) == value, (m, n)
    for m in range(1, MAX_EXACT_TRANSPOSABLE_M + 1):
        assert transposable_block_count(m, 1) == math.factorial(m)
        assert transposable_block_count(m, 0) == transposable_block_count(m, m) == 1


def test_tau_symmetry_computed_both_ways() -> None:
    # _count_regular runs the dynamic program itself for n and for m - n (no complement shortcut).
    for m in range(2, 10):
        for n in range(1, m):
            assert _count_regular(m, n) == _count_regular(m, m - n), (m, n)
    for n in range(17):
        assert transposable_block_count(16, n) == transposable_block_count(16, 16 - n)


def test_tau_speed_m16_every_n() -> None:
    _tau.cache_clear()
    start = time.process_time()  # CPU time: a busy shared machine stretches wall time, not this
    values = [transposable_block_count(16, n) for n in range(17)]
    elapsed = time.process_time() - start
    # Loose guard; about 0.3 s of CPU.
    assert elapsed < 2.0, f"tau(16, n) for all n took {elapsed:.2f} s of CPU time"
    assert values[8] > values[7] > values[1] == math.factorial(16)
    start = time.perf_counter()
    transposable_block_count(16, 8)
    assert time.perf_counter() - start < 0.01  # memoised


# ----------------------------------------------------------------------------------------------------------
# mask_diversity against brute-force mask counts, with nmsparse's own checks
# ----------------------------------------------------------------------------------------------------------


def all_masks(numel: int) -> torch.Tensor:
    bits = torch.arange(1 << numel)
    return ((bits[:, None] >> torch.arange(numel)) & 1).bool()  # (2**numel, numel)


@pytest.mark.parametrize(("pattern", "expected"), [("2:4", 36), ("1:4", 16), ("3:4", 16), ("1:2", 16)])
def test_plain_diversity_equals_count_of_valid_masks_numel_8(pattern: str, expected: int) -> None:
    p = nmsparse.NMPattern.parse(pattern)
    # is_nm_sparse allows at most n per group; at density n/m the total forces exactly n in each group.
    count = sum(
        1
        for mask in all_masks(8)
        if int(mask.sum()) == 8 * p.n // p.m and nmsparse.is_nm_sparse(mask.reshape(2, 4), pattern)
    )
    assert count == expected == mask_diversity(pattern, 8)


def test_unstructured_diversity_equals_count_of_masks() -> None:
    masks = all_masks(8)
    for kept in range(1, 9):
        assert int((masks.sum(dim=1) == kept).sum()) == mask_diversity("unstructured", 8, density=kept / 8)


@pytest.mark.parametrize(("pattern", "expected"), [("2:4-T", 90), ("1:4-T", 24), ("3:4-T", 24)])
def test_transposable_diversity_equals_count_of_all_4x4_masks(pattern: str, expected: int) -> None:
    p = nmsparse.NMPattern.parse(pattern)
    masks = all_masks(16).reshape(-1, 4, 4)  # all 65536 masks of a 4x4 weight
    # Stacked vertically, each mask is exactly one aligned 4x4 block: the per-block counts are per mask.
    rows, cols = nm_counts(masks.reshape(-1, 4), pattern)
    at_most_n = (rows <= p.n).all(dim=1) & (cols <= p.n).all(dim=1)  # what is_nm_sparse accepts
    full = masks.sum(dim=(1, 2)) == 16 * p.n // 4
    valid = at_most_n & full
    assert int(valid.sum()) == expected == mask_diversity(pattern, 16)
    assert int(((rows == p.n).all(dim=1) & (cols == p.n).all(dim=1)).sum()) == expected
    # The vectorised counts agree with is_nm_sparse itself, mask by mask, on valid and invalid masks.
    generator = torch.Generator().manual_seed(0)
    sample = torch.cat([torch.nonzero(valid).flatten(), torch.randint(0, 1 << 16, (100,), generator=generator)])
    for i in sample.tolist():
        assert nmsparse.is_nm_sparse(masks[i], pattern) == bool(at_most_n[i])


def test_plain_diversity_on_all_4x4_masks() -> None:
    masks = all_masks(16).reshape(-1, 4, 4)
    groups, _ = nm_counts(masks.reshape(-1, 4), "2:4")
    assert int((groups.reshape(-1, 4) == 2).all(dim=1).sum()) == mask_diversity("2:4", 16) == 6**4


def test_design_numbers_for_64_weights() -> None:
    md_24, md_48t, md_24t = (mask_diversity(p, 64) for p in ("2:4", "4:8-T", "2:4-T"))
    assert (md_24, md_48t, md_24t) == (6**16, 116_963_796_250, 90**4)
    assert f"{md_24:.1e}" == "2.8e+12" and f"{md_48t:.1e}" == "1.2e+11" and f"{md_24t:.1e}" == "6.6e+07"
    assert md_24 > md_48t > 1000 * md_24t
    assert mask_diversity("unstructured", 64) == math.comb(64, 32)
    assert mask_diversity("8:16-T", 256) == transposable_block_count(16, 8)
    assert mask_diversity(nmsparse.NMPattern(4, 8, True), 128) == 116_963_796_250**2
    assert mask_diversity("2:4", 64, density=0.5) == md_24  # density equal to n/m is accepted
    assert mask_diversity("unstructured", np.int64(30), density=0.1) == math.comb(30, 3)  # 0.1 * 30 != 3 in floats


def test_paper_closed_form_is_wrong_except_for_n_1() -> None:
    assert paper_closed_form_transposable(4, 2) == 144
    assert paper_closed_form_transposable(8, 4) == math.prod(math.factorial(k) for k in (8, 7, 6, 5))
    for m in range(1, MAX_EXACT_TRANSPOSABLE_M + 1):
        assert paper_closed_form_transposable(m, 0) == 1
        assert paper_closed_form_transposable(m, 1) == math.factorial(m) == transposable_block_count(m, 1)
        for n in range(2, m):
            paper, exact = paper_closed_form_transposable(m, n), transposable_block_count(m, n)
            # As documented: over-counts for n >= 3 and for 2:m up to m = 9; under-counts 2:m for m >= 10.
            assert (paper > exact) if (n >= 3 or m <= 9) else (paper < exact), (m, n)


# ----------------------------------------------------------------------------------------------------------
# log10 and the estimate
# ----------------------------------------------------------------------------------------------------------


def test_log10_matches_exact_integers() -> None:
    for pattern, numel in [
        ("2:4", 64),
        ("4:8-T", 128),
        ("2:4-T", 4096),
        ("8:16-T", 512),
        ("unstructured", 4096),
    ]:
        assert log10_mask_diversity(pattern, numel) == pytest.approx(
            math.log10(mask_diversity(pattern, numel)), rel=1e-12
        )
    # Above 4096 weights unstructured uses lgamma.
    assert log10_mask_diversity("unstructured", 8192) == pytest.approx(math.log10(math.comb(8192, 4096)), abs=1e-6)
    huge = log10_mask_diversity("2:4", 10**9)  # MD itself would have ~2e8 digits
    assert huge == pytest.approx(10**9 / 4 * math.log10(6), rel=1e-12)
    assert log10_mask_diversity("unstructured", 10**8, density=0.25) > 0


@pytest.mark.parametrize(("m", "max_error"), [(8, 0.027), (12, 0.018), (16, 0.014)])
def test_canfield_mckay_estimate_accuracy(m: int, max_error: float) -> None:
    errors = []
    for n in range(1, m):
        exact = math.log10(transposable_block_count(m, n))
        estimate = estimate_log10_transposable_block_count(m, n)
        errors.append(exact - estimate)
    # Under-estimates by a few percent, as the docstring states; never by more than max_error in log10.
    assert all(0 < e <= max_error for e in errors), errors
    assert max(errors) > max_error - 0.004  # the stated bound is tight, not loose
    assert estimate_log10_transposable_block_count(m, 0) == estimate_log10_transposable_block_count(m, m) == 0.0


def test_estimate_error_shrinks_with_m_and_covers_large_blocks() -> None:
    worst = [
        max(
            math.log10(transposable_block_count(m, n)) - estimate_log10_transposable_block_count(m, n)
            for n in range(1, m)
        )
        for m in (8, 12, 16)
    ]
    assert worst[0] > worst[1] > worst[2]
    assert estimate_log10_mask_diversity("16:32-T", 2048) == pytest.approx(
        2 * estimate_log10_transposable_block_count(32, 16)
    )
    assert estimate_log10_mask_diversity("4:8-T", 128) == pytest.approx(
        2 * estimate_log10_transposable_block_count(8, 4)
    )
    assert estimate_log10_mask_diversity("2:4", 64) == log10_mask_diversity("2:4", 64)  # no estimate needed


# ----------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"pattern": "2:5:3", "numel": 64}, PatternError, ["'2:5:3'", "unstructured"]),
        ({"pattern": "5:4", "numel": 64}, PatternError, ["n=5", "m=4"]),
        ({"pattern": 2.4, "numel": 64}, PatternError, ["float", "unstructured"]),
        ({"pattern": "2:6-T", "numel": 36}, PatternError, ["m=6"]),
        ({"pattern": "2:4", "numel": 0}, ShapeError, ["numel", "positive", "got 0"]),
        ({"pattern": "2:4", "numel": -8}, ShapeError, ["numel", "-8"]),
        ({"pattern": "2:4", "numel": 2.5}, ConfigError, ["numel", "int", "2.5"]),
        ({"pattern": "2:4", "numel": True}, ConfigError, ["numel", "bool"]),
        ({"pattern": "2:4", "numel": 10}, ShapeError, ["numel=10", "multiple of m = 4"]),
        ({"pattern": "2:4-T", "numel": 24}, ShapeError, ["numel=24", "m^2 = 16", "4x4"]),
        ({"pattern": "unstructured", "numel": 63}, ShapeError, ["31.5", "whole number", "density"]),
        ({"pattern": "unstructured", "numel": 10, "density": 1e-12}, ShapeError, ["keeps no weight"]),
        ({"pattern": "unstructured", "numel": 64, "density": 0.0}, ConfigError, ["density", "(0, 1]", "0.0"]),
        ({"pattern": "unstructured", "numel": 64, "density": 1.5}, ConfigError, ["density", "1.5"]),
        ({"pattern": "unstructured", "numel": 64, "density": -0.1}, ConfigError, ["density", "-0.1"]),
        ({"pattern": "unstructured", "numel": 64, "density": float("nan")}, ConfigError, ["density", "nan"]),
        ({"pattern": "unstructured", "numel": 64, "density": "0.5"}, ConfigError, ["density", "str"]),
        ({"pattern": "2:4", "numel": 64, "density": 0.25}, ConfigError, ["2:4", "n/m = 0.5", "0.25", "None"]),
        ({"pattern": "16:32-T", "numel": 1024}, ConfigError, ["m=32", "estimate_log10_mask_diversity"]),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        mask_diversity(kwargs.pop("pattern"), kwargs.pop("numel"), **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, NMSparseError)
    message = str(info.value)
    assert message.startswith("mask_diversity")
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (
            lambda: transposable_block_count(17, 8),
            ["m <= 16", "m=17", "estimate_log10_transposable_block_count"],
        ),
        (lambda: transposable_block_count(4, 5), ["0 <= n <= m", "n=5"]),
        (lambda: transposable_block_count(4, -1), ["n=-1"]),
        (lambda: transposable_block_count(0, 0), ["m must be >= 1", "m=0"]),
        (lambda: transposable_block_count(4.0, 2), ["m must be an int", "float"]),
        (lambda: paper_closed_form_transposable(4, 5), ["n=5"]),
        (lambda: estimate_log10_transposable_block_count(8, 9), ["n=9"]),
        (lambda: log10_mask_diversity("2:4", 6), ["multiple of m = 4"]),
        (lambda: estimate_log10_mask_diversity("4:8-T", 8), ["m^2 = 64"]),
    ],
)
def test_bad_block_arguments(call, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, NMSparseError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_trivial_large_blocks_are_exact() -> None:
    assert transposable_block_count(32, 1) == transposable_block_count(32, 31) == math.factorial(32)
    assert transposable_block_count(64, 0) == transposable_block_count(64, 64) == 1
    assert mask_diversity("1:32-T", 2048) == math.factorial(32) ** 2
    with pytest.raises(ConfigError, match="estimate"):
        transposable_block_count(32, 2)


def test_estimate_accepts_blocks_beyond_exact_range() -> None:
    assert estimate_log10_transposable_block_count(32, 16) > math.log10(transposable_block_count(16, 8)) * 3
    assert estimate_log10_transposable_block_count(64, 1) == pytest.approx(math.log10(math.factorial(64)), abs=0.01)


# ----------------------------------------------------------------------------------------------------------
# diversity_summary
# ----------------------------------------------------------------------------------------------------------


def test_diversity_summary_rows() -> None:
    exact = diversity_summary("2:4-T", 64)
    assert (exact.status, exact.mask_diversity, exact.paper_closed_form) == ("exact", 90**4, 144**4)
    assert exact.log10_mask_diversity == pytest.approx(4 * math.log10(90))
    plain = diversity_summary("2:4", 64)
    assert plain.paper_closed_form is None and plain.log10_paper_closed_form is None
    na = diversity_summary("8:16-T", 64)
    assert (na.status, na.reason, na.mask_diversity) == ("n/a", "numel not a multiple of m^2 = 256", None)
    assert diversity_summary("unstructured", 63).reason == "numel * density = 31.5 is not a whole number of weights"
    estimate = diversity_summary("16:32-T", 1024)
    assert estimate.status == "estimate" and estimate.mask_diversity is None and "Canfield-McKay" in estimate.reason
    assert estimate.log10_mask_diversity == pytest.approx(estimate_log10_transposable_block_count(32, 16))
    assert estimate.paper_closed_form == paper_closed_form_transposable(32, 16)
    capped = diversity_summary("2:4", 4096, max_digits=100)
    assert capped.mask_diversity is None and capped.log10_mask_diversity == pytest.approx(1024 * math.log10(6))
    assert diversity_summary("2:4", 4096, max_digits=None).mask_diversity == 6**1024
    with pytest.raises(ConfigError, match="n/m"):
        diversity_summary("2:4", 64, density=0.3)
    with pytest.raises(ShapeError, match="positive"):
        diversity_summary("2:4", 0)


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def table_rows(out: str) -> dict[str, str]:
    return {
        line.split()[0] + " " + line.split()[1]: line
        for line in out.splitlines()
        if line
        and line.split()[0]
        in {"unstructured", "1:2", "1:4", "1:4-T"}
        | {f"{n}:{m}{t}" for n, m in [(2, 4), (4, 8), (8, 16), (16, 32), (2, 16)] for t in ("", "-T")}
    }


def test_cli_default_table_for_64_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diversity", "--numel", "64"]) == 0
    out = capsys.readouterr().out
    assert "paper closed form (over-counts)" in out and "log10(MD)" in out
    rows = table_rows(out)
    assert "2821109907456" in rows["2:4 50%"] and "12.45" in rows["2:4 50%"]
    assert "116963796250" in rows["4:8-T 50%"] and "17557585920000" in rows["4:8-T 50%"]
    assert "65610000" in rows["2:4-T 50%"] and "429981696" in rows["2:4-T 50%"]
    assert "1832624140942590534" in rows["unstructured 50%"]
    assert "n/a: numel not a multiple of m^2 = 256" in rows["8:16-T 50%"]
    assert "n/a: numel not a multiple of m^2 = 1024" in rows["16:32-T 50%"]
    assert "unstructured 25%" in rows and "1:4-T 25%" in rows
    assert rows["2:4 50%"].rstrip().endswith("12.45")  # no paper column for plain patterns


def test_cli_estimate_scientific_and_full(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diversity", "--numel", "1024", "--structures", "2:4,4:8-T,16:32-T"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert "1.61e199" in rows["2:4 50%"]
    assert "1.23e177" in rows["4:8-T 50%"] and "8.16e211" in rows["4:8-T 50%"]
    assert "~" in rows["16:32-T 50%"] and "(estimate)" in rows["16:32-T 50%"]
    assert main(["diversity", "--numel", "1024", "--structures", "2:4", "--full"]) == 0
    assert str(6**256) in capsys.readouterr().out


def test_cli_flags_paper_rows_that_do_not_over_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diversity", "--numel", "256", "--structures", "2:16-T,1:4-T,8:16-T"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["2:16-T 12.5%"].endswith("(under-counts here)")
    assert rows["1:4-T 25%"].endswith("(= MD)")
    assert rows["8:16-T 50%"].endswith("e74")  # over-counts: no marker


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["diversity", "--numel", "64", "--json", "--structures", "2:4-T, unstructured@25%,16:32-T"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["numel"] == 64
    first, second, third = data["rows"]
    assert first["structure"] == "2:4-T" and first["mask_diversity"] == "65610000"
    assert first["paper_closed_form"] == "429981696" and first["status"] == "exact"
    assert second["density"] == 0.25 and int(second["mask_diversity"]) == math.comb(64, 16)
    assert third["status"] == "n/a" and third["mask_diversity"] is None and "1024" in third["reason"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--numel", "0"], ["--numel", "positive", "got 0"]),
        (["--numel", "-3"], ["--numel", "-3"]),
        (["--structures", "2:4,bogus"], ["'bogus'"]),
        (["--structures", " , "], ["--structures", "empty"]),
        (["--structures", "unstructured@half"], ["density", "unstructured@half"]),
        (["--structures", "2:4@25%"], ["n/m", "0.25"]),
    ],
)
def test_cli_bad_input_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], words: list[str]
) -> None:
    assert main(["diversity", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmsparse diversity: error:")
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_scientific_formatting_is_exact() -> None:
    assert cli_diversity._scientific(116_963_796_250) == "1.17e11"
    assert cli_diversity._scientific(9995) == "1.00e4"  # rounding carries into the exponent
    assert cli_diversity._scientific(999_499) == "9.99e5"
    assert cli_diversity._scientific(10**400 * 1234) == "1.23e403"
    assert cli_diversity._scientific_from_log10(math.log10(9.996e50)) == "1.00e51"


def test_diversity_command_uses_the_shared_table_formatter() -> None:
    # One table formatter for every command (cli/_table.py); diversity kept its own copy.
    from nmsparse.cli import _table
    from nmsparse.cli import diversity as diversity_cli

    assert not hasattr(diversity_cli, "_format_table")
    table = _table.format_table(
        ["name", "value"], [["a", "12"], ["b", "n/a: too big"]], align="lr", left_if=lambda cell: cell.startswith("n/a")
    )
    assert table.splitlines() == [
        "name         value",
        "----  ------------",
        "a               12",
        "b     n/a: too big",
    ]
