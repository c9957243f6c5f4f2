"""The output head run at padded row counts (restdecode.head)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import BYTE_VOCAB, OracleDrafter, byte_tokenizer, tiny_model

from restdecode import generate, generate_batch
from restdecode import head as head_module
from restdecode.backends.transformers import TransformersBackend
from restdecode.head import (head_widths_for, measure_head_widths, padded_head, padded_width,
                             table_digest)

EIGHTS = tuple(max(8 * -(-m // 8), m) for m in range(1, 65))  # every count up to a multiple of 8


def test_measured_widths_pad_upwards_within_the_slack_only():
    head = torch.nn.Linear(32, 500, bias=False)
    widths = measure_head_widths(head, max_width=20, passes=1, slack=3)
    assert len(widths) == 20
    assert all(m <= w <= min(m + 3, 20) for m, w in enumerate(widths, start=1))
    assert measure_head_widths(head, max_width=5, passes=1, slack=0) == (1, 2, 3, 4, 5)
    for bad in (dict(max_width=0), dict(passes=0), dict(slack=-1), dict(gain=0.0)):
        with pytest.raises(ValueError):
            measure_head_widths(head, **bad)


def test_padded_width_beyond_the_table_is_the_count_itself():
    assert [padded_width(EIGHTS, m) for m in (1, 3, 8, 9, 64, 65, 200)] == [8, 8, 8, 16, 64, 65, 200]


def test_a_padded_head_gives_the_same_logits_and_is_restored_after(monkeypatch):
    """Within the block the head multiplies 8 rows for 3 and cuts the result back; the logits
    are those of the plain product (to float rounding); after the block the module is the
    model's own again (``generate`` and friends see no change)."""
    model = tiny_model("llama", vocab_size=BYTE_VOCAB)
    head = model.get_output_embeddings()
    hidden = torch.randn(1, 3, head.in_features)
    want = head(hidden)
    seen = []
    linear = head_module.F.linear
    monkeypatch.setattr(head_module.F, "linear",
                        lambda x, w, b=None: seen.append(x.shape[0]) or linear(x, w, b))
    with padded_head(model, EIGHTS):
        got = head(hidden)
        assert head(hidden[:, :1, :]).shape == (1, 1, BYTE_VOCAB)  # 1 -> 8 rows as well
    assert seen == [8, 8]
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert "forward" not in vars(head) and not hasattr(head, "_restdecode_head_widths")
    with padded_head(model, None):  # no table: nothing installed
        assert "forward" not in vars(head)


def test_tables_are_measured_once_per_model_and_machine_then_read(monkeypatch, tmp_path):
    monkeypatch.setenv("RESTDECODE_HEAD_PADDING", "1")
    model = tiny_model("qwen2", vocab_size=BYTE_VOCAB)
    monkeypatch.setattr(head_module, "measure_head_widths", lambda head: EIGHTS)
    assert head_widths_for(model, cache_dir=tmp_path) == EIGHTS
    monkeypatch.setattr(head_module, "measure_head_widths",
                        lambda head: pytest.fail("measured again"))
    assert head_widths_for(model, cache_dir=tmp_path) == EIGHTS  # read from the cache
    monkeypatch.setenv("RESTDECODE_HEAD_PADDING", "0")
    assert head_widths_for(model, cache_dir=tmp_path) is None


def test_a_table_that_pads_nothing_installs_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("RESTDECODE_HEAD_PADDING", "1")
    monkeypatch.setattr(head_module, "measure_head_widths", lambda head: tuple(range(1, 65)))
    assert head_widths_for(tiny_model("llama", vocab_size=BYTE_VOCAB), cache_dir=tmp_path) is None


def forced_padding(monkeypatch):
    """Every backend built from now on pads its head to multiples of 8."""
    monkeypatch.setattr(head_module, "head_widths_for", lambda model, cache_dir=None: EIGHTS)


def test_profiles_of_a_padded_head_have_keys_of_their_own(monkeypatch):
    model = tiny_model("llama", vocab_size=BYTE_VOCAB)
    plain = TransformersBackend(model).profile_key()
    forced_padding(monkeypatch)
    padded = TransformersBackend(model).profile_key()
    assert padded == plain | {"head_padding": table_digest(EIGHTS)}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_padded_forwards_keep_greedy_output_exact_alone_and_batched(monkeypatch, arch):
    """With the head padded, drafted single-sequence decoding and batched decoding of three
    rows with trees still give the plain greedy output of each prompt."""
    model, tok = tiny_model(arch, vocab_size=BYTE_VOCAB), byte_tokenizer()
    prompts = ["abcabc", "hello hello", "xyzxyz xyz"]
    want = [generate(model, tok, p, max_new_tokens=16).token_ids for p in prompts]
    forced_padding(monkeypatch)
    rows = []
    padded_forward = head_module._padded_forward
    monkeypatch.setattr(head_module, "_padded_forward", lambda self, hidden: rows.append(
        hidden.numel() // hidden.shape[-1]) or padded_forward(self, hidden))
    drafters = [OracleDrafter(len(tok(p)["input_ids"]), w, BYTE_VOCAB, seed=i)
                for i, (p, w) in enumerate(zip(prompts, want))]
    alone = [generate(model, tok, p, drafter=d, max_new_tokens=16).token_ids
             for p, d in zip(prompts, drafters)]
    for drafter in drafters:
        drafter.reset()
    batched = generate_batch(model, tok, prompts, drafters=drafters, max_new_tokens=16)
    assert alone == want and [r.token_ids for r in batched] == want
    assert any(count % 8 for count in rows)  # forwards whose head was padded
    assert "forward" not in vars(model.get_output_embeddings())
