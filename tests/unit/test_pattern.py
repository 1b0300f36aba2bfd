import pytest

from nmsparse import NMPattern
from nmsparse.errors import NMSparseError, PatternError


@pytest.mark.parametrize(
    "spec, n, m, transposable",
    [
        ("2:4", 2, 4, False),
        ("4:8-T", 4, 8, True),
        ("1:4", 1, 4, False),
        ("8:16-T", 8, 16, True),
        ("2:4-t", 2, 4, True),
        ("8:16-t", 8, 16, True),
        ("16:32-T", 16, 32, True),
        ("3:7", 3, 7, False),
    ],
)
def test_parse_accepted_forms(spec, n, m, transposable):
    p = NMPattern.parse(spec)
    assert (p.n, p.m, p.transposable) == (n, m, transposable)
    assert NMPattern.parse(str(p)) == p
    assert p.density == n / m and p.sparsity == 1 - n / m


@pytest.mark.parametrize(
    "spec",
    [
        "3:2",
        "0:4",
        "4:4",
        "2:4-X",
        "a:b",
        "",
        "2-4",
        "2:4:8",
        "-1:4",
        "2:3-T",
        "2:6-T",
        " 2:4",
        "2:4 ",
        "2 : 4",
        "2:4 -T",
        "2:4-T\n",
        "\u0662:\u0664",
        "\uff12:\uff14",
        "2:\u0664-T",
        "+2:4",
        "2:4T",
        "2:4-TT",
    ],
)
def test_parse_rejects_with_accepted_forms(spec):
    with pytest.raises(PatternError) as info:
        NMPattern.parse(spec)
    assert isinstance(info.value, ValueError) and isinstance(info.value, NMSparseError)
    message = str(info.value)
    assert "2:4" in message or "4:8-T" in message  # shows accepted forms or valid block sizes


def test_parse_rejects_non_strings():
    with pytest.raises(PatternError, match="expected a string"):
        NMPattern.parse(24)  # type: ignore[arg-type]
    with pytest.raises(PatternError, match="must be an int"):
        NMPattern(2.0, 4)  # type: ignore[arg-type]


def test_pattern_passes_through_and_is_hashable():
    p = NMPattern(2, 4, True)
    assert NMPattern.parse(p) is p
    assert {p: 1}[NMPattern.parse("2:4-T")] == 1


@pytest.mark.parametrize(
    ("spec", "hint"), [(" 2:4", "remove the spaces"), ("2 : 4", "remove the spaces"), ("\u0662:\u0664", "ASCII digits")]
)
def test_rejected_spellings_say_why(spec, hint):
    # Regression (issue 7): surrounding and inner spaces and non-ASCII digits were accepted.
    with pytest.raises(PatternError, match=hint) as info:
        NMPattern.parse(spec)
    assert '"N:M-T"' in str(info.value)  # and the accepted forms


@pytest.mark.parametrize(
    ("value", "quoted"), [(124, "'2:4'"), (248, "'4:8'"), (64, "'1:4'"), (496, "'8:16'"), (992, "'16:32'")]
)
def test_yaml_base60_integer_says_quote_it(value, quoted):
    # Regression (issue 7): YAML 1.1 turns an unquoted 2:4 into 124 (base 60).
    with pytest.raises(PatternError, match=f"quote it: {quoted}"):
        NMPattern.parse(value)  # type: ignore[arg-type]


def test_other_integers_are_plainly_refused():
    for value in (24, 0, -124, 60):
        with pytest.raises(PatternError, match="expected a string") as info:
            NMPattern.parse(value)  # type: ignore[arg-type]
        assert "quote it" not in str(info.value)
