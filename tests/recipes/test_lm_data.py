"""The LM recipe's embedded corpus, byte tokenizer and batches: deterministic, hashed, split by document name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nmsparse.errors import ConfigError
from nmsparse.recipes.lm import corpus as corpus_module
from nmsparse.recipes.lm.corpus import Document, load_corpus
from nmsparse.recipes.lm.data import build_lm_data
from nmsparse.recipes.lm.tokenizer import EOT, ByteTokenizer


def test_corpus_hash_is_stable_across_fresh_collections() -> None:
    first = load_corpus(("topics",))
    corpus_module._load.cache_clear()
    second = load_corpus(("topics",))
    assert first is not second and first.sha256 == second.sha256 and first.documents == second.documents
    # The hash covers the texts: one changed character changes it.
    docs = list(first.documents)
    docs[0] = Document(docs[0].name, docs[0].text + ".")
    assert corpus_module._hash(docs) != first.sha256


@pytest.mark.slow
def test_corpus_hash_is_the_same_in_another_process() -> None:
    # Another string-hash seed: nothing in the collection may depend on set or dict iteration of strings.
    code = "from nmsparse.recipes.lm.corpus import load_corpus; print(load_corpus(('topics',)).sha256)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300, env=env)
    assert out.stdout.strip() == load_corpus(("topics",)).sha256


def test_docstrings_are_read_from_source_without_importing(tmp_path) -> None:
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg" / "mod.py").write_text(
        '"""Module doc."""\nraise SystemExit("imported!")\n'
        'class A:\n    """Class doc."""\n    def f(self):\n        """Method doc."""\n'
        'if True:\n    def g():\n        """Nested in if."""\n'
    )
    (lib / "test").mkdir()
    (lib / "test" / "t.py").write_text('"""Excluded test doc."""\n')
    (lib / "broken.py").write_text('"""Doc."""\nprint "python 2"\n')
    (lib / "_sysconfigdata_x.py").write_text('"""Machine specific."""\n')
    corpus = load_corpus(("docstrings",), stdlib_dir=lib)
    assert [d.name for d in corpus.documents] == ["docstrings:pkg/mod.py"]
    assert corpus.documents[0].text == "Module doc.\n\nClass doc.\n\nMethod doc.\n\nNested in if."


def test_split_is_by_document_name_and_deterministic() -> None:
    corpus = load_corpus(("topics",))
    train, heldout = corpus.split(100)
    assert heldout and train and not {d.name for d in train} & {d.name for d in heldout}
    assert len(train) + len(heldout) == len(corpus.documents)
    assert corpus.split(100) == (train, heldout)
    # A document's side depends on its name only, not on the other documents or their order.
    reordered = corpus_module.Corpus(
        documents=tuple(reversed(corpus.documents)), sources=corpus.sources, sha256="", python=""
    )
    assert {d.name for d in reordered.split(100)[1]} == {d.name for d in heldout}
    with pytest.raises(ConfigError, match="heldout_permille"):
        corpus.split(0)


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="sources must be"):
        load_corpus(("wikipedia",))


def test_byte_tokenizer_round_trip_and_document_separator() -> None:
    tok = ByteTokenizer()
    text = "naïve café \u2603 tab\tend"
    assert tok.decode(tok.encode(text)) == text
    stream = tok.encode_documents(["ab", "c\x00d"])
    assert stream.dtype == torch.uint8 and stream.tolist() == [97, 98, EOT, 99, 100, EOT]


def test_batches_are_a_function_of_seed_and_step() -> None:
    data = build_lm_data(sources=("topics",))
    a = data.train_batch(step=5, batch_size=4, context=32, seed=1)
    b = data.train_batch(step=5, batch_size=4, context=32, seed=1)
    c = data.train_batch(step=6, batch_size=4, context=32, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    x, y = a
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = list(data.heldout_batches(context=32, batch_size=7))
    assert sum(w.shape[0] for w in windows) == data.heldout.numel() // 32
    assert torch.equal(torch.cat(windows).reshape(-1), data.heldout[: (data.heldout.numel() // 32) * 32].long())
    assert data.describe()["corpus_sha256"] == load_corpus(("topics",)).sha256
