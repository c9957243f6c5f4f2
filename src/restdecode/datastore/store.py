"""`Datastore`: an opened, memory-mapped datastore file that answers searches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from restdecode.datastore.format import DatastoreHeader, MappedDatastore, read_datastore, verify_checksums
from restdecode.datastore.search import (MAX_MATCHES, MAX_SUFFIX, MIN_SUFFIX, SPAN, SearchResult,
                                         search_arrays)
from restdecode.datastore.vocab import tokenizer_fingerprint, tokenizer_name, tokenizer_vocab_size
from restdecode.errors import DatastoreError


class Datastore:
    """A datastore file mapped into memory: opening costs the same whatever its size."""

    def __init__(self, mapped: MappedDatastore) -> None:
        self._mapped = mapped
        self.path: Path = mapped.path
        self.header: DatastoreHeader = mapped.header

    @classmethod
    def open(cls, path: str | os.PathLike, tokenizer: Any = None) -> "Datastore":
        """Map ``path``; with ``tokenizer``, refuse a store built with a different vocabulary."""
        store = cls(read_datastore(path))
        if tokenizer is not None:
            store.check_tokenizer(tokenizer)
        return store

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise :class:`DatastoreError` unless ``tokenizer`` has the vocabulary the store was built with."""
        fingerprint = tokenizer_fingerprint(tokenizer)
        # equal fingerprints imply equal sizes, unless the header was edited: the size bounds
        # every id a search returns, so it must not exceed the model's vocabulary
        if fingerprint != self.header.tokenizer_fingerprint or \
                self.header.vocab_size != tokenizer_vocab_size(tokenizer):
            built_with = f"'{self.header.tokenizer_name}' ({self.header.vocab_size:,} tokens, " \
                         f"{self.header.tokenizer_fingerprint})"
            this_one = f"'{tokenizer_name(tokenizer)}' ({tokenizer_vocab_size(tokenizer):,} tokens, {fingerprint})"
            raise DatastoreError(f"datastore {self.path} was built with tokenizer {built_with}, this "
                                 f"model's tokenizer is {this_one}; rebuild the datastore for this model")

    def search(
        self,
        context: Sequence[int] | np.ndarray,
        max_suffix: int = MAX_SUFFIX,
        min_suffix: int = MIN_SUFFIX,
        max_matches: int = MAX_MATCHES,
        span: int = SPAN,
    ) -> SearchResult:
        """Continuations of the longest suffix of ``context`` found in the store (see
        :mod:`restdecode.datastore.search` for the exact semantics)."""
        return search_arrays(self._mapped.tokens, self._mapped.suffix_array, self.header.vocab_size,
                             context, max_suffix=max_suffix, min_suffix=min_suffix,
                             max_matches=max_matches, span=span, source=str(self.path))

    @property
    def num_documents(self) -> int:
        return self.header.num_documents

    @property
    def sections(self) -> dict[str, dict]:
        """The section table: ``{name: {offset, dtype, count, crc32}}``."""
        return self._mapped.sections

    @property
    def file_size(self) -> int:
        return self._mapped.file_size

    @property
    def bytes_per_token(self) -> float:
        """File bytes per real (non-separator) token."""
        return self.file_size / max(1, self.header.num_tokens)

    def document(self, index: int) -> np.ndarray:
        """Token ids of document ``index`` (int64 copy); :class:`DatastoreError` if the stored
        offsets or tokens of that document are damaged."""
        if not 0 <= index < self.num_documents:
            raise IndexError(f"document {index} out of range (0..{self.num_documents - 1})")
        tokens = self._mapped.tokens
        start, end = (int(value) for value in self._mapped.doc_offsets[index:index + 2])
        stored = tokens[start:end - 1] if 0 <= start < end <= tokens.size else None
        if stored is None or tokens[end - 1] != 0 or (stored.size and (
                stored.min() == 0 or stored.max() > self.header.vocab_size)):
            raise DatastoreError(f"{self.path}: document {index} is damaged (offsets {start}..{end}); "
                                 "the file is corrupt (rebuild it)")
        return stored.astype(np.int64) - 1

    def verify(self) -> None:
        """Read the whole file and check the section checksums (slow: proportional to size)."""
        bad = verify_checksums(self._mapped)
        if bad:
            raise DatastoreError(f"{self.path} is corrupt: checksum mismatch in {', '.join(bad)}")

    def close(self) -> None:
        """Drop the arrays and the mapping (searching afterwards is an error)."""
        mapping = self._mapped.mapping
        self._mapped = None  # type: ignore[assignment]
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # a caller still holds a view (e.g. a search result); the GC will unmap it

    def __enter__(self) -> "Datastore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h = self.header
        return (f"Datastore({str(self.path)!r}, {h.num_tokens:,} tokens in {h.num_documents:,} documents, "
                f"u{8 * h.token_width}, source={h.source!r})")
