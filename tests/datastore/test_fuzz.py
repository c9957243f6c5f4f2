"""Seeded fuzzing of a small datastore: hundreds of damaged copies, each through
``datastore-info`` (with and without ``--verify``), ``Datastore.open`` + ``search`` and a short
generation with a tiny model drafting from the store.

Every case must end in a :class:`RestdecodeError` (CLI: exit 1 with one line on stderr) or in a
correct result: search rows identical to the intact store's when the checksums still hold, and
in every case generation output identical to plain greedy decoding (drafts are verified) and no
id outside the vocabulary in any search result or draft. Run with ``-s`` to see the tally.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from restdecode.cli import main
from restdecode.datastore import Datastore, build_datastore
from restdecode.errors import DatastoreError, RestdecodeError

SEED = 1234
NUM_CASES = 300
NUM_WORDS = 30  # word tokenizer: [UNK] + 30 words, vocabulary 31
PHRASES = [[3, 4, 5, 6, 7], [8, 9, 3, 4, 10], [11, 12, 13, 5, 6, 14, 15]]
ODD_VALUES = [-1, 0, 1, 2, 63, 64, 65_535, 65_536, 2**31, 2**63, 2**64, 1.5, float("nan"), "abc", "",
              None, True, [], {}, [1, 2], {"offset": 0}, "<u2", "<u4", "<i4", "<i8", "<f8"]
DEEP = "(nested 5,000 deep)"


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory, make_word_tokenizer):
    """Tokenizer, intact store bytes, model, prompt, plain greedy output, search contexts."""
    from restdecode.decode import generate
    from tiny_models import tiny_model

    directory = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(7)
    texts = []
    for _ in range(20):
        ids: list[int] = []
        while len(ids) < 14:
            ids += PHRASES[rng.integers(len(PHRASES))] if rng.random() < 0.6 else [int(rng.integers(NUM_WORDS))]
        texts.append(" ".join(f"w{i}" for i in ids))
    corpus = directory / "c.jsonl"
    corpus.write_text("".join(json.dumps({"t": text}) + "\n" for text in texts))
    tokenizer = make_word_tokenizer(NUM_WORDS)
    path = build_datastore(tokenizer, f"jsonl:{corpus}:t", directory / "s.rds", progress=False, workers=1)
    vocab = len(tokenizer)
    model = tiny_model("llama", vocab_size=vocab)
    prompt = tokenizer(texts[0], add_special_tokens=False)["input_ids"][:6]
    baseline = generate(model, tokenizer, input_ids=prompt, max_new_tokens=4).token_ids
    contexts = [prompt, [p + 1 for p in PHRASES[0]], [p + 1 for p in PHRASES[2][:3]], [vocab - 1, 1, 2]]
    with Datastore.open(path, tokenizer) as store:
        assert store.header.num_tokens > 200 and store.header.vocab_size == vocab
        expected = [search_rows(store, context, vocab) for context in contexts]
        assert any(expected), "the intact store must answer some searches"
    return dict(tokenizer=tokenizer, data=path.read_bytes(), model=model, prompt=prompt,
                baseline=baseline, contexts=contexts, expected=expected, vocab=vocab, directory=directory)


def search_rows(store: Datastore, context, vocab: int) -> list[tuple]:
    """The search result as comparable rows; asserts that every returned id is in the vocabulary."""
    result = store.search(context, span=6)
    rows = []
    for row, length, count in zip(result.continuations.tolist(), result.lengths.tolist(), result.counts.tolist()):
        assert 1 <= length <= 6 and count >= 1
        assert all(0 <= token < vocab for token in row[:length]), f"id outside the vocabulary: {row}"
        rows.append((tuple(row[:length]), count))
    return [(result.match_length, result.num_occurrences)] + rows if rows else []


# ----------------------------------------------------------------------------- mutations


def sections_of(data: bytes) -> dict:
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[24:24 + length])["sections"]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random mutation of the file: (description, bytes)."""
    kind = ["flip", "flip_section", "truncate", "overwrite", "header", "header", "append"][rng.integers(7)]
    out = bytearray(data)
    if kind in ("flip", "flip_section"):
        lo, hi = 0, len(data)
        if kind == "flip_section":
            name = ["tokens", "suffix_array", "doc_offsets"][rng.integers(3)]
            section = sections_of(data)[name]
            lo = section["offset"]
            hi = lo + section["count"] * int(section["dtype"][-1])
            kind = f"flip in {name}"
        positions = rng.integers(lo, hi, size=rng.integers(1, 4))
        for position in positions:
            out[position] ^= 1 << int(rng.integers(8)) if rng.random() < 0.5 else int(rng.integers(1, 256))
        return f"{kind} at {positions.tolist()}", bytes(out)
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        return f"truncate to {cut}", data[:cut]
    if kind == "overwrite":
        start = int(rng.integers(0, len(data)))
        size = int(rng.integers(1, 65))
        fill = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes() if rng.random() < 0.6 else \
            bytes([int(rng.choice([0, 255]))]) * size
        out[start:start + size] = fill[:len(out) - start]
        return f"overwrite {size} bytes at {start}", bytes(out)
    if kind == "append":
        extra = int(rng.integers(1, 100))
        return f"append {extra} bytes", data + bytes(extra)
    return hand_made_header(data, rng)


def hand_made_header(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """Change one header field (or the whole header) and recompute the checksum."""
    length = struct.unpack_from("<I", data, 12)[0]
    fields = json.loads(data[24:24 + length])
    choice = rng.integers(4)
    if choice == 0:  # a top-level field
        key = str(rng.choice(sorted(fields)))
        value = odd_value(rng)
        fields[key] = value
        what = f"header {key} = {value!r:.40}"
    elif choice == 1:  # a section field
        name = str(rng.choice(sorted(fields["sections"])))
        key = str(rng.choice(["offset", "dtype", "count", "crc32"]))
        value = odd_value(rng)
        fields["sections"][name][key] = value
        what = f"header sections.{name}.{key} = {value!r:.40}"
    elif choice == 2:  # a field removed
        key = str(rng.choice(sorted(fields)))
        del fields[key]
        what = f"header without {key}"
    else:  # not a header at all
        fields = odd_value(rng)
        what = f"header replaced by {fields!r:.40}"
    body = json.dumps(fields).replace(json.dumps(DEEP), "[" * 5_000 + "]" * 5_000).encode()
    if len(body) <= length:
        body = body.ljust(length)  # keep the layout: only the checked field differs
    prelude = struct.pack("<8sIII4x", data[:8], 1, len(body), zlib.crc32(body))
    return what, prelude + body + data[24 + max(length, len(body)):]


def odd_value(rng: np.random.Generator):
    """A value of a wrong type or range (``DEEP``: JSON nested far beyond the recursion limit)."""
    return DEEP if rng.random() < 0.1 else ODD_VALUES[rng.integers(len(ODD_VALUES))]


# ----------------------------------------------------------------------------- one case


class CheckedStore:
    """A datastore whose every search result is checked for out-of-vocabulary ids."""

    def __init__(self, store: Datastore, vocab: int) -> None:
        self.store, self.vocab = store, vocab

    def search(self, context, **options):
        result = self.store.search(context, **options)
        ids = result.continuations[np.arange(result.continuations.shape[1]) < result.lengths[:, None]]
        assert ids.size == 0 or (ids.min() >= 0 and ids.max() < self.vocab), ids
        return result


def run_cli(argv: list[str], capsys) -> str:
    """Run the CLI: 'info ok' / 'info error'; an error must be one line, no traceback."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code in (0, 1), (code, captured.err)
    if code == 1:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"restdecode {argv[0]}: error: ") and \
            "Traceback" not in captured.err, captured.err
        return "error"
    return "ok"


def run_case(path: Path, setup: dict, capsys) -> dict[str, str]:
    """All checks of one damaged file; the outcome of each stage."""
    from restdecode.decode import generate
    from restdecode.drafting import RetrievalDrafter

    outcome = {"info": run_cli(["datastore-info", str(path)], capsys),
               "verify": run_cli(["datastore-info", str(path), "--verify"], capsys)}
    try:
        store = Datastore.open(path, setup["tokenizer"])
    except DatastoreError:
        outcome["open"] = "error"
        return outcome
    outcome["open"] = "ok"
    try:
        store.verify()
        intact = True
    except DatastoreError:
        intact = False
    try:
        rows = [search_rows(store, context, setup["vocab"]) for context in setup["contexts"]]
        outcome["search"] = "ok"
        if intact:  # same checksums, same arrays: the same answers
            assert rows == setup["expected"]
    except DatastoreError:
        outcome["search"] = "error"
    drafter = RetrievalDrafter(CheckedStore(store, setup["vocab"]), budget=8, span=6)
    try:
        result = generate(setup["model"], setup["tokenizer"], input_ids=setup["prompt"], drafter=drafter,
                          max_new_tokens=4)
        assert result.token_ids == setup["baseline"], "speculative output differs from greedy"
        outcome["generate"] = "ok"
    except RestdecodeError:
        outcome["generate"] = "error"
    outcome["checksums"] = "ok" if intact else "bad"
    return outcome


def test_fuzzed_datastores_fail_cleanly_or_answer_correctly(fuzz_setup, capsys, request):
    rng = np.random.default_rng(SEED)
    tally: Counter = Counter()
    for case in range(NUM_CASES):
        what, data = ("intact", fuzz_setup["data"]) if case == 0 else mutate(fuzz_setup["data"], rng)
        path = fuzz_setup["directory"] / f"case{case}.rds"
        path.write_bytes(data)
        try:
            outcome = run_case(path, fuzz_setup, capsys)
        except Exception as error:  # noqa: BLE001 - name the case that broke
            raise AssertionError(f"fuzz case {case} ({what}): {type(error).__name__}: {error}") from error
        if case == 0:
            assert outcome == {"info": "ok", "verify": "ok", "open": "ok", "checksums": "ok", "search": "ok",
                               "generate": "ok"}
        tally[" ".join(f"{stage}={value}" for stage, value in outcome.items())] += 1
        path.unlink()
    if request.config.getoption("capture") == "no":  # -s: show the tally
        with capsys.disabled():
            print(f"\nfuzz: {NUM_CASES} cases (seed {SEED})")
            for line, count in tally.most_common():
                print(f"  {count:4d}  {line}")
    assert sum(tally.values()) == NUM_CASES
    stages = Counter(part for line, count in tally.items() for part in line.split() for _ in range(count))
    # the mutations reach every stage: rejected at open, damaged but answering, caught at search
    assert stages["open=error"] > 50 and stages["open=ok"] > 20
    assert stages["search=error"] > 0 and stages["checksums=bad"] > 0
