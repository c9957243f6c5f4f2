"""The decoding loop: greedy output identical to plain greedy decoding whatever the drafts, sampled
output distributed as the model's, and the end conditions (EOS, length, stop strings, context)."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
import torch

from tiny_models import (BYTE_VOCAB, SAMPLING_PROMPT, SAMPLING_VOCAB, LetterTokenizer, OracleDrafter,
                         RandomTreeDrafter, byte_tokenizer, sampling_model_and_distribution,
                         tiny_model, trie_tree)
from restdecode.decode import generate, stream
from restdecode.errors import DecodingError
from test_accept import chi_square_p


@functools.lru_cache(maxsize=None)
def byte_model(arch: str):
    return tiny_model(arch, vocab_size=BYTE_VOCAB)


@functools.lru_cache(maxsize=None)
def tokenizer():
    return byte_tokenizer()


def reference_greedy(model, prompt_ids: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """transformers' own greedy decoding: the ground truth."""
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=0, **kwargs)
    return out[0, len(prompt_ids):].tolist()


def oracle_generations(model, decoding_model=None, *, runs: int = 3, max_new_tokens: int = 40,
                       seed: int = 7):
    """``(prompt, transformers' greedy tokens, the oracle drafter, our result)`` for ``runs``
    random prompts; ours decodes through ``decoding_model`` (default: ``model``)."""
    rng = np.random.default_rng(seed)
    for run in range(runs):
        prompt = rng.integers(3, BYTE_VOCAB, int(rng.integers(2, 12))).tolist()
        want = reference_greedy(model, prompt, max_new_tokens)
        drafter = OracleDrafter(len(prompt), want, BYTE_VOCAB, seed=run)
        got = generate(decoding_model or model, tokenizer(), input_ids=prompt, drafter=drafter,
                       max_new_tokens=max_new_tokens)
        yield prompt, want, drafter, got


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_greedy_with_drafts_is_token_identical_to_transformers(arch):
    model = byte_model(arch)
    total_steps = total_tokens = 0
    for prompt, want, drafter, got in oracle_generations(model):
        assert got.token_ids == want
        assert got.text == tokenizer().decode(want, skip_special_tokens=True)
        assert drafter.observed == want  # the drafter saw every committed token once
        total_steps += got.stats.steps
        total_tokens += sum(got.stats.accepted_per_step)
        plain = generate(model, tokenizer(), input_ids=prompt, max_new_tokens=40)
        assert plain.token_ids == want and set(plain.stats.accepted_per_step) <= {1}
    assert total_tokens > 1.5 * total_steps  # drafts were really accepted, several per step


def test_eos_inside_an_accepted_path_stops_exactly_there():
    model = byte_model("llama")
    prompt = [40, 50, 60, 70]
    free = reference_greedy(model, prompt, 30, eos_token_id=None)
    cut = next(i for i in range(3, 30) if free[i] not in free[:i])
    model_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = free[cut]
    try:
        # The oracle proposes the whole truth, so the EOS token sits inside an accepted path.
        drafter = OracleDrafter(len(prompt), free, BYTE_VOCAB, depth=12)
        drafter.propose = lambda ids: trie_tree([free[len(ids) - len(prompt):][:12]])
        got = generate(model, tokenizer(), input_ids=prompt, drafter=drafter, max_new_tokens=30)
        assert got.token_ids == free[: cut + 1] == reference_greedy(model, prompt, 30)
        assert got.stats.stop_reason == "eos" and max(got.stats.accepted_per_step) > 1
    finally:
        model.generation_config.eos_token_id = model_eos


@pytest.mark.parametrize("max_new_tokens", [0, 1, 2, 7])
def test_max_new_tokens_is_never_exceeded(max_new_tokens):
    model = byte_model("qwen2")
    prompt = [10, 20, 30]
    free = reference_greedy(model, prompt, 20, eos_token_id=None)
    model_eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        drafter = OracleDrafter(len(prompt), free, BYTE_VOCAB)
        drafter.propose = lambda ids: trie_tree([free[len(ids) - len(prompt):][:10]])
        got = generate(model, tokenizer(), input_ids=prompt, drafter=drafter,
                       max_new_tokens=max_new_tokens)
    finally:
        model.generation_config.eos_token_id = model_eos
    assert got.token_ids == free[:max_new_tokens]
    # Drafts deeper than the tokens still allowed are not even verified.
    assert all(size <= max_new_tokens - 1 for size in got.stats.tree_size_per_step)


@pytest.mark.parametrize("arch,prompt", [("qwen2", "Once upon a time,"), ("gemma3", "Hello there")])
def test_stop_strings_end_the_text_as_transformers_does(arch, prompt):
    """qwen2: a stop string inside the output; gemma3 repeats the prompt's last letter, so its
    stop string ("ee") begins in the prompt, which transformers counts too."""
    model, tok = byte_model(arch), tokenizer()
    prompt_ids = tok(prompt)["input_ids"]
    text = tok.decode(reference_greedy(model, prompt_ids, 30, eos_token_id=None))
    at = next(i for i in range(4, len(text) - 1) if text[i:i + 2].isascii() and text[i:i + 2].isalnum())
    stop = text[at:at + 2]
    want = reference_greedy(model, prompt_ids, 30, stop_strings=[stop], tokenizer=tok)
    got = generate(model, tok, prompt, max_new_tokens=30, stop_strings=[stop])
    assert got.token_ids == want and len(want) < 30
    assert got.stats.stop_reason == "stop_string" and stop in (prompt + got.text)[-len(got.text) - 1:]


def test_prompt_longer_than_the_context_is_a_decoding_error():
    model = byte_model("llama")
    with pytest.raises(DecodingError, match="context"):
        generate(model, tokenizer(), input_ids=[5] * 256, max_new_tokens=4)
    # Two positions left (254, 255): the token predicted at 255 is the last; no overflow.
    got = generate(model, tokenizer(), input_ids=[5] * 254, max_new_tokens=8)
    assert len(got.token_ids) == 3 and got.stats.stop_reason == "context_full"


def test_exactly_one_input_is_required():
    with pytest.raises(DecodingError):
        generate(byte_model("llama"), tokenizer(), "text", input_ids=[3, 4])
    with pytest.raises(DecodingError):
        generate(byte_model("llama"), tokenizer())


def test_messages_use_the_chat_template():
    model, tok = byte_model("qwen2"), tokenizer()
    messages = [{"role": "user", "content": "Say hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    via_messages = generate(model, tok, messages=messages, max_new_tokens=10)
    via_ids = generate(model, tok, input_ids=tok(text, add_special_tokens=False)["input_ids"],
                       max_new_tokens=10)
    assert via_messages.token_ids == via_ids.token_ids
    assert via_messages.stats.prompt_tokens == len(text.encode())


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_stream_joins_to_the_generated_text(temperature):
    model, tok = byte_model("llama"), tokenizer()
    prompt = "Grüße, 世界 ✓"
    prompt_ids = tok(prompt)["input_ids"]
    free = reference_greedy(model, prompt_ids, 40)
    kwargs = dict(max_new_tokens=40, temperature=temperature, seed=3)
    pieces, events = [], stream(model, tok, prompt,
                                drafter=OracleDrafter(len(prompt_ids), free, BYTE_VOCAB), **kwargs)
    while True:
        try:
            pieces.append(next(events))
        except StopIteration as done:
            streamed = done.value
            break
        assert not torch.is_inference_mode_enabled()  # the caller's code runs in normal mode
    result = generate(model, tok, prompt,
                      drafter=OracleDrafter(len(prompt_ids), free, BYTE_VOCAB), **kwargs)
    assert "".join(pieces) == result.text == streamed.text
    assert streamed.token_ids == result.token_ids


def test_incremental_detokenisation_holds_back_split_characters():
    from restdecode.decode import _Output

    tok = tokenizer()
    text = "añb 世界 ✓ ok"
    output = _Output(tok, eos=set(), max_new_tokens=100, stop_strings=None)
    pieces = [piece for token in tok(text)["input_ids"] for piece in output.add([token])]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert "世" in pieces  # three byte tokens, one piece


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.8), (1.0, 1.0)])
def test_sampled_generation_has_the_model_distribution(temperature, top_p):
    """End to end over the first 3 tokens of a vocab-8 model. 3,000 generations per case keep this
    file fast; test_accept checks the accept stage itself on 20,000 draws."""
    vocab, n, prompt = SAMPLING_VOCAB, 3_000, SAMPLING_PROMPT
    model, expected = sampling_model_and_distribution(temperature, top_p)
    drafter = RandomTreeDrafter(vocab, np.random.default_rng(0))
    counts, multi = Counter(), 0
    for seed in range(n):
        result = generate(model, LetterTokenizer(), input_ids=prompt, drafter=drafter,
                          max_new_tokens=3, temperature=temperature, top_p=top_p, seed=seed)
        counts[tuple(result.token_ids)] += 1
        multi += result.stats.steps < 2
    assert multi > n // 10  # speculation often accepted a draft token
    assert chi_square_p(counts, expected, n) > 1e-3


def test_loop_feeds_verified_trees_to_a_planned_drafters_calibration():
    from restdecode.drafting.planner import AcceptanceCalibration, PlannedDrafter
    from restdecode.latency import LatencyProfile

    model = byte_model("llama")
    prompt = [41, 52, 63, 74, 85]
    want = reference_greedy(model, prompt, 30)
    flat = LatencyProfile(widths=[1, 64], cache_lengths=[1, 256], seconds=np.full((2, 2), 0.01), key={})
    calibration = AcceptanceCalibration()
    drafter = PlannedDrafter(OracleDrafter(len(prompt), want, BYTE_VOCAB, seed=3), flat,
                             calibration=calibration)
    got = generate(model, tokenizer(), input_ids=prompt, drafter=drafter, max_new_tokens=30)
    assert got.token_ids == want
    accepted_drafts = sum(got.stats.accepted_per_step) - got.stats.steps
    assert accepted_drafts > 0
    # Every accepted draft node was reported to the calibration as a success.
    assert calibration.successes.sum() == accepted_drafts
    assert calibration.trials.sum() > calibration.successes.sum()
