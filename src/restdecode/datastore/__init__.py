"""REST datastore: build (corpus -> tokens -> suffix array -> one file), open (memory-mapped), search.

>>> store = Datastore.open("sharegpt.rds", tokenizer)           # doctest: +SKIP
>>> result = store.search(context_ids)                           # doctest: +SKIP
>>> result.match_length, result.continuations, result.counts     # doctest: +SKIP
"""

from restdecode.datastore.build import build_datastore, build_from_token_documents
from restdecode.datastore.format import DatastoreHeader
from restdecode.datastore.search import SearchResult
from restdecode.datastore.sources import Corpus, open_source
from restdecode.datastore.store import Datastore
from restdecode.datastore.vocab import tokenizer_fingerprint

__all__ = [
    "Corpus",
    "Datastore",
    "DatastoreHeader",
    "SearchResult",
    "build_datastore",
    "build_from_token_documents",
    "open_source",
    "tokenizer_fingerprint",
]
