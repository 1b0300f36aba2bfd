"""Embedded text: the documentation that ships with Python itself, collected deterministically, split by document.

Two sources, both part of every CPython installation and needing no download:

* ``"topics"``: :mod:`pydoc_data.topics`, the language reference topics ``help()`` shows (about 0.5 MB).
* ``"docstrings"``: the docstrings (module, class, function, method) of the standard library's ``.py`` files,
  read with :mod:`ast` from the source files, so no module is imported and nothing runs. Files are visited in
  sorted order of their path relative to the standard library directory; third-party packages, test suites,
  IDLE, demos, bundled wheels and machine-specific files (``_sysconfigdata*``) are left out
  (:data:`EXCLUDED_DIRS`, :data:`EXCLUDED_FILES`).

A **document** is one pydoc topic or one source file's docstrings joined by blank lines. Each document has a
stable name (``"topics:<key>"``, ``"docstrings:json/decoder.py"``) and goes to the held-out split when the
SHA-256 of its name, read as an integer, modulo 1000 is below ``heldout_permille``. The split therefore depends
only on the names (not on the order, the content or the other documents), and whole documents are held out so
that the held-out text is not a neighbour of a training line.

The corpus hash (:attr:`Corpus.sha256`) covers the names and texts of every document in order plus the collection
version; the same Python build gives the same hash on every machine. Record it with every run.

Example:
    >>> corpus = load_corpus(sources=("topics",))
    >>> len(corpus.sha256), corpus.documents[0].name.startswith("topics:")
    (64, True)
    >>> train, heldout = corpus.split(50)
    >>> len(train) + len(heldout) == len(corpus.documents)
    True
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import sys
import sysconfig
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmsparse.errors import ConfigError

__all__ = ["Document", "Corpus", "load_corpus", "SOURCES", "CORPUS_VERSION", "EXCLUDED_DIRS", "EXCLUDED_FILES"]

#: Version of the collection rules; part of the hash, bumped whenever the rules change the text.
CORPUS_VERSION = 1
#: Known sources, in the order their documents are concatenated.
SOURCES = ("topics", "docstrings")
#: Directory names (at any depth of the standard library tree) whose files are not read.
EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "lib-dynload",
        "__pycache__",
        "__phello__",
        "encodings",  # ~100 generated codec modules whose docstrings repeat one boilerplate paragraph
    }
)
#: File names (or prefixes ending in ``*``) that are not read: machine-specific or not documentation.
EXCLUDED_FILES = ("_sysconfigdata*", "__hello__.py", "this.py", "antigravity.py")


@dataclass(frozen=True)
class Document:
    """One unit of the corpus: a stable ``name`` and its ``text``."""

    name: str
    text: str

    @property
    def split_key(self) -> int:
        """SHA-256 of the name as an integer modulo 1000 (the held-out split compares it to a per-mille)."""
        return int.from_bytes(hashlib.sha256(self.name.encode("utf-8")).digest()[:8], "big") % 1000


@dataclass(frozen=True)
class Corpus:
    """The collected documents and their hash.

    Attributes:
        documents: in collection order (sources in :data:`SOURCES` order, then sorted names / paths).
        sources: which sources were collected.
        sha256: hex SHA-256 over the version, the names and the texts.
        python: the Python version the text came from (the hash is only comparable for the same build).
    """

    documents: tuple[Document, ...]
    sources: tuple[str, ...]
    sha256: str
    python: str

    @property
    def num_chars(self) -> int:
        """Characters over every document."""
        return sum(len(d.text) for d in self.documents)

    def split(self, heldout_permille: int) -> tuple[list[Document], list[Document]]:
        """``(train, heldout)`` documents; a document is held out when ``split_key < heldout_permille``.

        Raises:
            ConfigError: ``heldout_permille`` outside ``1..999`` or a split that leaves one side empty.
        """
        if (
            isinstance(heldout_permille, bool)
            or not isinstance(heldout_permille, int)
            or not 1 <= heldout_permille <= 999
        ):
            raise ConfigError(
                f"corpus split: heldout_permille must be an int in 1..999 (per mille of "
                f"documents held out), got {heldout_permille!r}"
            )
        train = [d for d in self.documents if d.split_key >= heldout_permille]
        heldout = [d for d in self.documents if d.split_key < heldout_permille]
        if not train or not heldout:
            raise ConfigError(
                f"corpus split: heldout_permille={heldout_permille} leaves {len(train)} training and "
                f"{len(heldout)} held-out documents out of {len(self.documents)}; use more "
                f"sources or another per-mille"
            )
        return train, heldout


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _excluded_file(name: str) -> bool:
    for rule in EXCLUDED_FILES:
        if rule.endswith("*") and name.startswith(rule[:-1]) or name == rule:
            return True
    return False


def _stdlib_files(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("config-")]
        for name in filenames:
            if name.endswith(".py") and not _excluded_file(name):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


_DEFS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(source: str) -> list[str]:
    """Docstrings of the module and of every class and function, in reading order (pre-order over statements)."""
    tree = ast.parse(source)
    out = []
    # Only statement lists are walked (ast.walk would visit every expression node: 3x slower).
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DEFS):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                out.append(doc.strip())
        children: list[ast.AST] = []
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            value = getattr(node, field, None)
            if isinstance(value, list):
                children.extend(child for child in value if isinstance(child, ast.AST))
        stack.extend(reversed(children))
    return out


def _docstring_documents(root: Path) -> list[Document]:
    documents = []
    for rel in _stdlib_files(root):
        try:
            with tokenize.open(root / rel) as handle:
                source = handle.read()
            docs = _docstrings(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a file this Python cannot parse is not documentation of it
        if docs:
            documents.append(Document(f"docstrings:{rel}", "\n\n".join(docs)))
    return documents


def _topic_documents() -> list[Document]:
    from pydoc_data.topics import topics  # plain data module: a dict literal, no side effects

    return [Document(f"topics:{key}", text.strip()) for key, text in sorted(topics.items()) if text.strip()]


def _hash(documents: Sequence[Document]) -> str:
    digest = hashlib.sha256(f"nmsparse-lm-corpus/{CORPUS_VERSION}\n".encode())
    for doc in documents:
        for part in (doc.name, doc.text):
            data = part.encode("utf-8")
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return digest.hexdigest()


def _check_sources(sources: Sequence[str]) -> tuple[str, ...]:
    if isinstance(sources, str):
        sources = (sources,)
    chosen = tuple(sources)
    unknown = [s for s in chosen if s not in SOURCES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"corpus: sources must be distinct names from {list(SOURCES)}, got {list(chosen)}")
    return tuple(s for s in SOURCES if s in chosen)


@functools.lru_cache(maxsize=4)
def _load(sources: tuple[str, ...], root: str) -> Corpus:
    documents: list[Document] = []
    if "topics" in sources:
        documents += _topic_documents()
    if "docstrings" in sources:
        documents += _docstring_documents(Path(root))
    python = f"{sys.implementation.name} {sys.version.split()[0]}"
    return Corpus(documents=tuple(documents), sources=sources, sha256=_hash(documents), python=python)


def load_corpus(sources: Sequence[str] = SOURCES, *, stdlib_dir: str | os.PathLike[str] | None = None) -> Corpus:
    """Collect the embedded corpus (cached per process).

    Args:
        sources: names from :data:`SOURCES` (their order does not matter; documents follow :data:`SOURCES`).
        stdlib_dir: standard library directory to read docstrings from (default: this Python's).

    Returns:
        A :class:`Corpus`.

    Raises:
        ConfigError: unknown sources.
    """
    chosen = _check_sources(sources)
    root = Path(stdlib_dir) if stdlib_dir is not None else _stdlib_dir()
    return _load(chosen, str(root))
