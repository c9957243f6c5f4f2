"""Early exit: the target's first layers + a head draft for it. The exit model shares the
target's weights and leaves it untouched, computes exactly the cut model (oracle: the full
model's hidden state after that layer, through the head, norm and lm_head), drafts losslessly
on Llama, Qwen2 and Gemma 3 (sliding window), and a head trained on another model is refused."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from test_draft_planner import record_depths
from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model
from restdecode.decode import generate
from restdecode.drafting import ContextDrafter, DraftModelDrafter
from restdecode.drafting.draft_model import merge_draft_model
from restdecode.drafting.early_exit import (ExitHead, early_exit_model, is_trained_drafter,
                                            load_exit_head, model_fingerprint, save_exit_head)
from restdecode.errors import ModelError

ARCHS = ["llama", "qwen2", "gemma3"]


@functools.lru_cache(maxsize=None)
def deep_model(arch: str):
    """4 layers; Gemma 3 alternates a 4-token sliding window with full attention."""
    return tiny_model(arch, vocab_size=BYTE_VOCAB, layers=4, sliding_window=4)


def trained_looking_head(model, seed: int = 1) -> ExitHead:
    head = ExitHead(model.config.hidden_size)
    torch.manual_seed(seed)
    with torch.no_grad():
        head.adapter.weight.normal_(0, 0.05)
        head.adapter.bias.normal_(0, 0.05)
    return head


@pytest.mark.parametrize("arch", ARCHS)
def test_the_exit_model_is_the_cut_model_and_leaves_the_target_untouched(arch):
    model = deep_model(arch)
    ids = torch.tensor([[5, 9, 17, 33, 8, 70, 12, 40, 41, 42]])
    with torch.no_grad():
        before = model(ids).logits
        full = model(ids, output_hidden_states=True)
        head = trained_looking_head(model)
        exit_model = early_exit_model(model, 2, head)
        got = exit_model(ids).logits
        expected = model.lm_head(model.model.norm(head(full.hidden_states[2])))
        after = model(ids).logits
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(after, before)  # the target still runs all its layers
    assert len(exit_model.model.layers) == 2 and len(model.model.layers) == 4
    assert model.config.num_hidden_layers == 4
    assert exit_model.model.layers[0] is model.model.layers[0]  # shared, not copied
    assert exit_model.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()


@pytest.mark.parametrize("arch", ARCHS)
def test_early_exit_drafts_are_lossless_alone_and_merged(arch):
    model = deep_model(arch)
    exit_model = early_exit_model(model, 2, trained_looking_head(model))
    rng = np.random.default_rng(4)
    prompts = [rng.integers(3, BYTE_VOCAB, int(rng.integers(2, 12))).tolist() for _ in range(3)]
    alone = DraftModelDrafter(exit_model, k=3)

    class Cheap:
        def predict(self, width, cache_length):
            return 0.001 + 0.0 * np.asarray(width, dtype=np.float64)

    class Target:
        def predict(self, width, cache_length):
            return 0.01 + 0.0005 * np.asarray(width, dtype=np.float64)

    merged = merge_draft_model(DraftModelDrafter(exit_model, k=3),
                               ContextDrafter(budget=8, min_suffix=1), budget=8,
                               profile=Target(), draft_profile=Cheap())
    depths = record_depths(merged)
    for prompt in prompts:
        plain = generate(model, byte_tokenizer(), input_ids=prompt, max_new_tokens=24)
        for drafter in (alone, merged):
            got = generate(model, byte_tokenizer(), input_ids=prompt, drafter=drafter,
                           max_new_tokens=24)
            assert got.token_ids == plain.token_ids
    assert alone.session is not None and max(depths) > 0  # the exit model did draft


def test_an_exit_layer_outside_the_model_is_refused():
    model = deep_model("llama")
    for layer in (0, 4, 9):
        with pytest.raises(ModelError, match="1..3"):
            early_exit_model(model, layer)


def test_a_saved_head_loads_onto_its_model_and_is_refused_on_another(tmp_path):
    model = deep_model("llama")
    head = trained_looking_head(model)
    save_exit_head(tmp_path / "exit", head, {"kind": "early-exit", "layer": 2,
                                             "base_model": "tiny",
                                             "base_fingerprint": model_fingerprint(model)})
    assert is_trained_drafter(tmp_path / "exit") and not is_trained_drafter(tmp_path)
    loaded, facts = load_exit_head(model, tmp_path / "exit")
    assert facts["layer"] == 2
    torch.testing.assert_close(loaded.exit_head.adapter.weight, head.adapter.weight)
    other = tiny_model("llama", vocab_size=BYTE_VOCAB, layers=4, seed=3)
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(ModelError, match="trained on model 'tiny'.*not on this one"):
        load_exit_head(other, tmp_path / "exit")
    (tmp_path / "exit" / "drafter.json").write_text("{")
    with pytest.raises(ModelError, match="cannot read"):
        load_exit_head(model, tmp_path / "exit")


def test_hooks_on_the_target_do_not_fire_for_the_exit_model():
    model = deep_model("qwen2")
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        exit_model = early_exit_model(model, 2)
        with torch.no_grad():
            exit_model(torch.tensor([[5, 6, 7]]))
        assert calls == []
        with torch.no_grad():
            model(torch.tensor([[5, 6, 7]]))
        assert calls == [1]
    finally:
        handle.remove()
