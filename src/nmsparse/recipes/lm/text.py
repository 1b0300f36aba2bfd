"""Text for language models from the user's files, and the tokenizer of a model folder: the one place where
``nmsparse train lm``, ``nmsparse oneshot`` and ``nmsparse adaprune`` read ``--data`` and tokenise it.

``--data`` names UTF-8 files or folders:

* a ``.jsonl`` file: one JSON object per line, whose ``"text"`` string is one document (blank lines are skipped);
* any other file: plain UTF-8 text, cut into documents at blank lines (paragraphs);
* a folder: its ``.txt``, ``.md`` and ``.jsonl`` files, at any depth, in sorted path order.

Documents are named ``<file>:<index>`` (the file's name, or its path inside a given folder) and split into training
and held-out text by the hash of that name, exactly as the embedded corpus is
(:meth:`nmsparse.recipes.lm.corpus.Corpus.split`), so the split does not depend on where the files are.

Tokenisation (:func:`folder_tokenizer`): a model folder's ``tokenizer.json`` is read with the Rust ``tokenizers``
library (never remote code, never a pickle); a folder without one, or one written by the LM recipe (which records
``"tokenizer": "bytes"``), gets the recipe's byte tokenizer (:class:`~nmsparse.recipes.lm.tokenizer.ByteTokenizer`).

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "notes.txt").write_text("first paragraph\\n\\nsecond one\\n")
    >>> [d.name for d in read_documents([folder / "notes.txt"])]
    ['notes.txt:0', 'notes.txt:1']
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nmsparse.errors import InputError

from .corpus import Corpus, Document, _hash
from .tokenizer import ByteTokenizer

__all__ = [
    "read_documents",
    "load_text_corpus",
    "FolderTokenizer",
    "folder_tokenizer",
    "TEXT_SUFFIXES",
    "TOKENIZER_FILES",
]

#: File suffixes a ``--data`` folder is searched for.
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
#: Tokenizer files copied from a model folder into the folders written from it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")


def _read_utf8(path: Path, label: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"--data {label}: cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"--data {label}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); convert it to UTF-8"
        ) from None


def _jsonl_documents(path: Path, label: str) -> list[Document]:
    documents: list[Document] = []
    for number, line in enumerate(_read_utf8(path, label).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"--data {label}: line {number} is not JSON ({exc.msg}); a .jsonl file holds one "
                f'object per line, like {{"text": "..."}}'
            ) from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise InputError(
                f'--data {label}: line {number} has no "text" string; every line must be an object '
                f'like {{"text": "..."}}'
            )
        if text.strip():
            documents.append(Document(f"{label}:{len(documents)}", text.strip()))
    return documents


def _text_documents(path: Path, label: str) -> list[Document]:
    text = _read_utf8(path, label).replace("\x00", "")
    paragraphs = [p.strip() for p in _PARAGRAPH.split(text)]
    return [Document(f"{label}:{i}", p) for i, p in enumerate(p for p in paragraphs if p)]


def _file_documents(path: Path, label: str) -> list[Document]:
    read = _jsonl_documents if path.suffix.lower() == ".jsonl" else _text_documents
    return read(path, label)


def read_documents(paths: Sequence[str | os.PathLike[str]]) -> list[Document]:
    """The documents of ``--data`` files and folders, in the order given (see the module docstring).

    Raises:
        InputError: no path, a missing path, a file that is not UTF-8, a ``.jsonl`` line without a ``"text"``
            string, a folder without text files, or no text at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise InputError('--data: no file given; pass text files, .jsonl files with a "text" field, or a folder')
    documents: list[Document] = []
    for given in paths:
        path = Path(os.fspath(given)).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise InputError(f"--data {str(given)!r}: the folder holds no {', '.join(TEXT_SUFFIXES)} files")
            for file in files:
                documents += _file_documents(file, f"{path.name}/{file.relative_to(path).as_posix()}")
        elif path.is_file():
            found = _file_documents(path, path.name)
            if not found:
                raise InputError(f"--data {str(given)!r}: the file holds no text")
            documents += found
        else:
            raise InputError(f"--data {str(given)!r}: no such file or folder")
    if not documents:
        raise InputError(f"--data {[os.fspath(p) for p in paths]}: no text in these files")
    return documents


def load_text_corpus(paths: Sequence[str | os.PathLike[str]]) -> Corpus:
    """:func:`read_documents` as a :class:`~nmsparse.recipes.lm.corpus.Corpus` (``sources == ("files",)``) whose
    hash covers the document names and texts, so runs on the same text record the same hash.

    Raises:
        InputError: see :func:`read_documents`.
    """
    documents = read_documents(paths)
    python = f"{sys.implementation.name} {sys.version.split()[0]}"
    return Corpus(documents=tuple(documents), sources=("files",), sha256=_hash(documents), python=python)


class FolderTokenizer:
    """The ``tokenizer.json`` of a model folder, through the ``tokenizers`` library.

    Attributes:
        name: ``"tokenizer.json"`` plus the folder, for run records.
        vocab_size: token ids of the tokenizer (added tokens included).
        eot: the end-of-text id put between documents (the ``eos_token`` of ``tokenizer_config.json``, else the
            model's ``eos_token_id`` when the tokenizer has that id), or ``None``.
        folder: where it was read.
    """

    def __init__(self, folder: str | os.PathLike[str], *, eos_token_id: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        path = self.folder / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises plain Exceptions for a malformed file
            raise InputError(f"{path}: not a tokenizers file ({' '.join(str(exc).split())[:200]})") from None
        self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        self.name = f"tokenizer.json ({self.folder.name})"
        self.eot = self._end_of_text(eos_token_id)

    def _end_of_text(self, eos_token_id: int | None) -> int | None:
        config = self.folder / "tokenizer_config.json"
        if config.is_file():
            try:
                eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                eos = None
            if isinstance(eos, dict):
                eos = eos.get("content")
            found = self._tokenizer.token_to_id(eos) if isinstance(eos, str) else None
            if found is not None:
                return int(found)
        if eos_token_id is not None and 0 <= eos_token_id < self.vocab_size:
            return int(eos_token_id)
        return None

    def encode_documents(self, texts: Sequence[str]) -> torch.Tensor:
        """One ``int64`` stream: each document's ids (no special tokens added), then :attr:`eot` if there is one."""
        ids: list[int] = []
        for encoding in self._tokenizer.encode_batch(list(texts), add_special_tokens=False):
            ids += encoding.ids
            if self.eot is not None:
                ids.append(self.eot)
        return torch.tensor(ids, dtype=torch.long)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Copy the tokenizer's files into ``folder`` (what a written model folder carries)."""
        for name in TOKENIZER_FILES:
            if (self.folder / name).is_file():
                shutil.copy2(self.folder / name, Path(folder) / name)


def folder_tokenizer(folder: str | os.PathLike[str], vocab_size: int) -> ByteTokenizer | FolderTokenizer:
    """The tokenizer text for the model in ``folder`` is cut with (see the module docstring).

    Args:
        folder: a transformers model folder.
        vocab_size: the model's vocabulary (the tokenizer's ids must fit it).

    Raises:
        InputError: the folder's tokenizer uses remote code, has more ids than the model, or the folder has no
            ``tokenizer.json`` and the model's vocabulary is too small for bytes.
    """
    root = Path(folder)
    config: dict[str, Any] = {}
    if (root / "config.json").is_file():
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    record = config.get("nmsparse") or {}
    if isinstance(record, dict) and str(record.get("tokenizer", "")).startswith("bytes"):
        return ByteTokenizer()
    tokenizer_config = root / "tokenizer_config.json"
    if tokenizer_config.is_file() and "auto_map" in tokenizer_config.read_text(encoding="utf-8", errors="replace"):
        raise InputError(f"{tokenizer_config}: the tokenizer needs remote code (auto_map), which nmsparse never runs")
    if (root / "tokenizer.json").is_file():
        eos = config.get("eos_token_id")
        tokenizer = FolderTokenizer(root, eos_token_id=eos if isinstance(eos, int) else None)
        if tokenizer.vocab_size > vocab_size:
            raise InputError(
                f"{root}: tokenizer.json has {tokenizer.vocab_size} ids but the model's vocabulary "
                f"has {vocab_size}; the tokenizer does not belong to this model"
            )
        return tokenizer
    others = [name for name in ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt") if (root / name).is_file()]
    if others:
        raise InputError(
            f"{root}: its tokenizer has no tokenizer.json ({', '.join(others)} only), and nmsparse reads "
            f"fast tokenizers only; save it with a transformers fast tokenizer's save_pretrained"
        )
    if vocab_size >= ByteTokenizer.vocab_size:
        return ByteTokenizer()
    raise InputError(
        f"{root}: no tokenizer.json, and the model's vocabulary ({vocab_size}) is too small for the "
        f"byte tokenizer (256); save a fast tokenizer (tokenizer.json) into the folder"
    )
