"""MemoryDrafter: earlier outputs are searched like the context, never across their ends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.drafting import ContextDrafter, DraftTree, MemoryDrafter, StepFeedback
from restdecode.drafting.memory import SEPARATOR


def tree_paths(tree: DraftTree) -> set[tuple[int, ...]]:
    return {tuple(int(tree.tokens[j]) for j in tree.path_to(i)) for i in range(len(tree))}


def run_generation(drafter, prompt: list[int], output: list[int]) -> None:
    """What the decoding loop does, one token per step: reset, observe the prefill's token, then
    propose on the growing context and observe each committed token."""
    drafter.reset()
    drafter.observe(StepFeedback(output[:1]))
    context = prompt + output[:1]
    for token in output[1:]:
        drafter.propose(context)
        drafter.observe(StepFeedback([token]))
        context = context + [token]


def test_an_earlier_output_is_drafted_in_a_new_generation():
    memory = MemoryDrafter(budget=16)
    run_generation(memory, prompt=[90, 91], output=[5, 6, 7, 8, 9])
    run_generation(memory, prompt=[92, 93], output=[40])  # its reset remembered the first output
    assert memory.memory_tokens == 5
    tree = memory.propose([92, 93, 40, 6, 7])
    assert (8, 9) in tree_paths(tree)
    # A plain context drafter has no such memory.
    assert len(ContextDrafter(budget=16).propose([92, 93, 40, 6, 7])) == 0


def test_prompts_are_not_remembered():
    memory = MemoryDrafter(budget=16)
    run_generation(memory, prompt=[1, 2, 3, 4], output=[50, 51])
    memory.reset()
    assert memory.memory_tokens == 2
    assert len(memory.propose([7, 1, 2])) == 0  # "1 2 3 4" was a prompt, not an output


def test_continuations_stop_at_the_end_of_an_output():
    memory = MemoryDrafter(budget=16, span=6)
    run_generation(memory, prompt=[90], output=[5, 6, 7])
    run_generation(memory, prompt=[91], output=[8, 9, 10])
    memory.reset()
    tree = memory.propose([92, 5, 6])
    assert tree_paths(tree) == {(7,)}  # not (7, 8, 9, ...) from the next output
    assert SEPARATOR not in tree.tokens.tolist()


def test_memory_keeps_the_newest_outputs_within_max_tokens():
    memory = MemoryDrafter(budget=16, max_tokens=5)
    run_generation(memory, prompt=[90], output=[1, 2, 3])
    run_generation(memory, prompt=[90], output=[4, 5, 6])
    run_generation(memory, prompt=[90], output=[7, 8])
    memory.reset()
    assert memory.memory_tokens == 5
    assert (6,) in tree_paths(memory.propose([99, 4, 5]))
    assert len(memory.propose([99, 4, 5, 1, 2])) == 0  # the oldest output is gone


def test_forget_empties_the_memory():
    memory = MemoryDrafter(budget=16)
    run_generation(memory, prompt=[90, 91], output=[5, 6, 7, 8])
    memory.forget()
    assert memory.memory_tokens == 0
    memory.reset()
    assert memory.memory_tokens == 0 and len(memory.propose([92, 5, 6])) == 0


def test_a_context_that_does_not_extend_the_last_starts_a_new_generation():
    memory = MemoryDrafter(budget=16)
    run_generation(memory, prompt=[90, 91], output=[5, 6, 7, 8])
    tree = memory.propose([70, 71, 6, 7])  # no reset: the loop was not told
    assert memory.memory_tokens == 4 and (8,) in tree_paths(tree)


def test_within_one_generation_it_drafts_like_a_context_drafter():
    rng = np.random.default_rng(0)
    context = rng.integers(0, 4, 80).tolist()
    memory, plain = MemoryDrafter(budget=20), ContextDrafter(budget=20)
    for n in range(2, len(context)):
        a, b = memory.propose(context[:n]), plain.propose(context[:n])
        assert tree_paths(a) == tree_paths(b)


def test_negative_max_tokens_is_refused():
    with pytest.raises(ValueError, match="max_tokens"):
        MemoryDrafter(max_tokens=-1)


def test_the_memory_holds_every_committed_token():
    """The last step's tokens (and the end-of-sequence token) reach the memory too: they come
    through observe, after the last proposal."""
    import torch

    from tiny_models import tiny_model
    from restdecode.decode import generate

    model = tiny_model("llama", vocab_size=64)
    model.generation_config.eos_token_id = None  # run to max_new_tokens
    memory = MemoryDrafter(budget=8)
    outputs = []
    for prompt in ([3, 4, 5, 3, 4], [9, 8, 7]):
        result = generate(model, LetterTokenizer(), input_ids=prompt, drafter=memory,
                          max_new_tokens=24)
        outputs.append(result.token_ids)
    memory.reset()
    assert memory.outputs == outputs and memory.memory_tokens == 48


class LetterTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def test_the_memory_survives_a_save_and_load(tmp_path):
    memory = MemoryDrafter(budget=16)
    run_generation(memory, prompt=[90, 91], output=[5, 6, 7, 8])
    run_generation(memory, prompt=[92], output=[20, 21, 22])  # still the current generation
    path = tmp_path / "memory" / "m.npz"
    memory.save(path, key="tok A")
    again = MemoryDrafter(budget=16)
    assert again.load(path, key="tok A", vocab_size=100) == 2
    assert again.outputs == [[5, 6, 7, 8], [20, 21, 22]]
    assert (8,) in tree_paths(again.propose([1, 6, 7]))
    assert again.load(tmp_path / "missing.npz", key="tok A", vocab_size=100) == 0


@pytest.mark.parametrize("damage", ["other key", "small vocabulary", "bytes"])
def test_a_foreign_or_damaged_memory_file_is_refused_whole(tmp_path, damage):
    from restdecode.drafting.memory import MemoryFileError

    memory = MemoryDrafter(budget=16)
    run_generation(memory, prompt=[90], output=[5, 6, 70])
    path = tmp_path / "m.npz"
    memory.save(path, key="tok A")
    if damage == "bytes":
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 40] = b"\xff" * 40
        path.write_bytes(bytes(data))
    fresh = MemoryDrafter(budget=16)
    with pytest.raises(MemoryFileError):
        fresh.load(path, key="tok B" if damage == "other key" else "tok A",
                   vocab_size=50 if damage == "small vocabulary" else 100)
    assert fresh.outputs == []


def brute_force_memory(outputs: list[list[int]], context: list[int], min_suffix: int,
                       max_suffix: int, span: int, max_matches: int):
    """(match length, rows) scanning remembered outputs + context, each output followed by a
    separator: the longest suffix that occurs earlier, rows cut before a separator, empty rows
    dropped."""
    sequence = [token for output in outputs for token in output + [SEPARATOR]] + context
    n = len(sequence)
    for k in range(min(max_suffix, n - 1), min_suffix - 1, -1):
        suffix = sequence[n - k:]
        ends = [e for e in range(k, n) if sequence[e - k:e] == suffix][-max_matches:]
        if ends:
            rows = []
            for e in ends:
                row = sequence[e:e + span]
                row = row[:row.index(SEPARATOR)] if SEPARATOR in row else row
                if row:
                    rows.append(tuple(row))
            return k, rows
    return 0, []


@settings(max_examples=150, deadline=None)
@given(
    outputs=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=25), max_size=4),
    context=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    min_suffix=st.integers(1, 2),
    span=st.integers(1, 5),
    max_matches=st.integers(1, 50),
)
def test_memory_matches_brute_force_down_to_one_token(outputs, context, min_suffix, span,
                                                      max_matches):
    # With min_suffix 1 the drafter looks up bigrams first and single tokens only when the last
    # two tokens never occurred before: the same as scanning everything.
    drafter = MemoryDrafter(budget=1000, min_suffix=min_suffix, max_suffix=6, span=span,
                            max_matches=max_matches)
    for output in outputs:
        drafter.remember(output)
    drafter.reset()
    for end in range(1, len(context) + 1):
        found = drafter.continuations(context[:end])
        length, rows = brute_force_memory(outputs, context[:end], min_suffix, 6, span,
                                          max_matches)
        assert drafter.last_match_length == length
        assert [tuple(int(t) for t in row[:size])
                for row, size in zip(found.continuations, found.lengths)] == rows


@settings(max_examples=100, deadline=None)
@given(
    outputs=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=40), min_size=1, max_size=5),
    context=st.lists(st.integers(0, 4), min_size=1, max_size=40),
    min_suffix=st.integers(1, 3),
)
def test_the_bulk_index_equals_the_token_by_token_one(outputs, context, min_suffix):
    # A whole memory is indexed at once with numpy at each new generation (and a long context
    # in one step): the same n-gram -> positions lists as indexing token by token.
    import restdecode.drafting.context as context_module

    indexes = []
    saved = context_module._BULK_GRAMS
    try:
        for bulk in (1, 10**9):
            context_module._BULK_GRAMS = bulk
            drafter = MemoryDrafter(min_suffix=min_suffix, max_suffix=4)
            for output in outputs:
                drafter.remember(output)
            drafter.reset()
            drafter.continuations(context)
            indexes.append({gram: list(ends) for gram, ends in drafter._ends.items()})
    finally:
        context_module._BULK_GRAMS = saved
    assert indexes[0] == indexes[1]
