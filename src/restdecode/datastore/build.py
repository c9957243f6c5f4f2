"""Building a datastore: corpus -> tokens (one document at a time) -> suffix array -> one file.

Token layout: every document's ids + 1, followed by the separator 0. Stored that way, a
document's end sorts before every token, no continuation crosses a document boundary, and the
suffix array lists continuations in lexicographic order (see ``docs/datastore-format.md``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from restdecode.datastore.format import (
    FORMAT_VERSION,
    DatastoreHeader,
    check_output_path,
    suffix_array_dtype,
    token_dtype,
    token_width_for,
    write_datastore,
)
from restdecode.datastore.sources import Corpus, open_source, skipped_files_note
from restdecode.datastore.vocab import tokenizer_fingerprint, tokenizer_name, tokenizer_vocab_size
from restdecode.errors import DatastoreError

BATCH_DOCUMENTS = 512  # documents per tokenizer call
BATCH_CHARACTERS = 4_000_000  # ... or fewer, when they are long (bounds memory)
_SURROGATE = re.compile("[\ud800-\udfff]")


def build_datastore(
    tokenizer: Any,
    source: str | Corpus,
    out: str | os.PathLike,
    *,
    assistant_only: bool = False,
    workers: int = 2,
    progress: bool = True,
    allow_empty: bool = False,
) -> Path:
    """Tokenize ``source`` with ``tokenizer`` (no special tokens) into a datastore file at ``out``.

    ``source`` is a spec (``sharegpt``, ``code:DIR``, ``code:stdlib``, ``jsonl:PATH:FIELD``,
    ``text:GLOB``) or a :class:`Corpus`. ``workers`` > 1 lets a fast (Rust) tokenizer encode each
    batch on its thread pool; 1 encodes on one thread. The file is written atomically: a failed
    or killed build leaves any previous file at ``out`` intact. Returns ``Path(out)``.

    ``out`` is checked before anything is read. Skipped source files are reported on stderr
    (even without ``progress``) and recorded in the header's ``source_stats``. A corpus that
    yields no token is a :class:`DatastoreError` unless ``allow_empty``.
    """
    check_output_path(out)
    corpus = open_source(source, assistant_only=assistant_only) if isinstance(source, str) else source
    vocab_size = tokenizer_vocab_size(tokenizer)
    started = time.perf_counter()
    with _progress_bar(progress, f"tokenizing {corpus.description}") as bar:
        documents = _tokenize_documents(tokenizer, corpus.documents(), workers, bar)
        tokens, doc_offsets = assemble_tokens(documents, vocab_size)
    tokenize_seconds = time.perf_counter() - started
    _say(progress, _describe_stats(corpus))
    skipped = skipped_files_note(corpus.stats)
    _say(True, skipped and f"warning: {corpus.description}: {skipped}")
    if tokens.size == 0 and not allow_empty:
        raise DatastoreError(f"{corpus.description}: nothing to index (0 documents, 0 tokens)"
                             f"{'; ' + skipped if skipped else ''}; pass --allow-empty (allow_empty=True) "
                             "to write an empty datastore anyway")
    return _finish(out, tokens, doc_offsets, vocab_size=vocab_size,
                   fingerprint=tokenizer_fingerprint(tokenizer), name=tokenizer_name(tokenizer),
                   source=corpus.description, source_stats=dict(corpus.stats),
                   timings={"read_and_tokenize": tokenize_seconds}, started=started, progress=progress)


def build_from_token_documents(
    documents: Iterable[Sequence[int] | np.ndarray],
    out: str | os.PathLike,
    *,
    vocab_size: int,
    tokenizer_fingerprint: str = "",
    tokenizer_name: str = "",
    source: str = "token documents",
    progress: bool = False,
) -> Path:
    """Write a datastore from documents that are already token ids (each a separate document)."""
    started = time.perf_counter()
    tokens, doc_offsets = assemble_tokens(documents, vocab_size)
    return _finish(out, tokens, doc_offsets, vocab_size=vocab_size, fingerprint=tokenizer_fingerprint,
                   name=tokenizer_name, source=source, source_stats={},
                   timings={"assemble": time.perf_counter() - started}, started=started, progress=progress)


def assemble_tokens(documents: Iterable[Sequence[int] | np.ndarray], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored token array (ids + 1, a 0 after each document) and the document offsets.

    Empty documents are dropped. Raises :class:`DatastoreError` for an id outside the vocabulary.
    """
    dtype = token_dtype(token_width_for(vocab_size))
    pieces: list[np.ndarray] = []
    lengths: list[int] = []
    for document in documents:
        ids = np.asarray(document, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            continue
        if ids.min() < 0 or ids.max() >= vocab_size:
            bad = ids[(ids < 0) | (ids >= vocab_size)][0]
            raise DatastoreError(f"token id {bad} is outside the vocabulary of {vocab_size:,} tokens")
        stored = np.empty(ids.size + 1, dtype=dtype)
        stored[:-1] = ids + 1
        stored[-1] = 0
        pieces.append(stored)
        lengths.append(stored.size)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    doc_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=doc_offsets[1:])
    return tokens, doc_offsets


def build_suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array of the stored tokens with pydivsufsort (int32 when positions fit, else int64).

    pydivsufsort sorts u16/u32 input as big-endian bytes and keeps the aligned positions, so it
    needs ~(width x 4 or 8) bytes per token of scratch memory, briefly.
    """
    if tokens.size == 0:
        return np.zeros(0, dtype=suffix_array_dtype(0))
    from pydivsufsort import divsufsort

    suffix_array = divsufsort(np.ascontiguousarray(tokens))
    return suffix_array.astype(suffix_array_dtype(tokens.size), copy=False)


def _finish(out, tokens, doc_offsets, *, vocab_size, fingerprint, name, source, source_stats,
            timings, started, progress) -> Path:
    """Suffix array, header, atomic write; reports where the time went."""
    step = time.perf_counter()
    _say(progress, f"suffix array of {tokens.size:,} entries ...")
    suffix_array = build_suffix_array(tokens)
    timings["suffix_array"] = time.perf_counter() - step
    header = DatastoreHeader(
        format_version=FORMAT_VERSION,
        token_width=tokens.dtype.itemsize,
        vocab_size=int(vocab_size),
        tokenizer_fingerprint=fingerprint,
        num_documents=int(doc_offsets.size - 1),
        num_tokens=int(tokens.size - (doc_offsets.size - 1)),
        source=source,
        build_time=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        tokenizer_name=name,
        build_seconds=round(time.perf_counter() - started, 3),
        source_stats=source_stats,
        timings={key: round(value, 3) for key, value in timings.items()},
    )
    step = time.perf_counter()
    path = write_datastore(out, header, tokens, suffix_array, doc_offsets)
    timings["write"] = time.perf_counter() - step
    _say(progress, "time: " + ", ".join(f"{key} {value:.1f} s" for key, value in timings.items())
         + f"; total {time.perf_counter() - started:.1f} s")
    return path


def _tokenize_documents(tokenizer: Any, texts: Iterator[str], workers: int, bar: Any) -> Iterator[list[int]]:
    """Token ids of each text (no special tokens), encoded in batches."""
    encode = _batch_encoder(tokenizer)
    documents = 0
    for batch in _batches(texts):
        with _parallelism(workers):
            try:
                encoded = encode(batch)
            except (TypeError, UnicodeEncodeError):  # a lone surrogate (legal in JSON) is not UTF-8
                encoded = encode([_without_lone_surrogates(text) for text in batch])
        documents += len(encoded)
        bar.set_postfix(docs=f"{documents:,}", refresh=False)
        bar.update(sum(len(ids) for ids in encoded))
        yield from encoded


def _without_lone_surrogates(text: str) -> str:
    """``text`` with each unpaired surrogate (e.g. JSON ``"\\ud800"``) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _batch_encoder(tokenizer: Any):
    """A function list[str] -> list[list[int]]: the Rust backend when there is one (less Python
    overhead than ``tokenizer(...)``), else the tokenizer's own batch call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        return lambda batch: [encoding.ids for encoding in backend.encode_batch(batch, add_special_tokens=False)]
    return lambda batch: tokenizer(batch, add_special_tokens=False)["input_ids"]


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    characters = 0
    for text in texts:
        batch.append(text)
        characters += len(text)
        if len(batch) >= BATCH_DOCUMENTS or characters >= BATCH_CHARACTERS:
            yield batch
            batch, characters = [], 0
    if batch:
        yield batch


@contextlib.contextmanager
def _parallelism(workers: int) -> Iterator[None]:
    """Fast tokenizers parallelise a batch on Rust's thread pool unless TOKENIZERS_PARALLELISM is
    false (read at each call); ``workers == 1`` turns it off for the duration."""
    if workers > 1:
        yield
        return
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _progress_bar(enabled: bool, description: str):
    from tqdm import tqdm

    return tqdm(desc=description, unit="tok", unit_scale=True, disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)


def _describe_stats(corpus: Corpus) -> str:
    stats = corpus.stats
    if "records" in stats:
        note = (f"; the file is truncated (incomplete record at character {stats['truncated_at_char']:,} "
                "ignored)" if stats.get("truncated") else "")
        return f"read {stats['records']:,} complete records, {stats['turns']:,} turns{note}"
    return ", ".join(f"{key} {value:,}" for key, value in stats.items() if isinstance(value, int))


def _say(enabled: bool, message: str) -> None:
    if enabled and message:
        print(message, file=sys.stderr)
