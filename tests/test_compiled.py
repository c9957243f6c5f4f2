"""The compiled forward: greedy decoding through it gives transformers' tokens, drafts included,
the wrapped model stays eager, and its latency profile is kept apart from the eager one."""

from __future__ import annotations

import torch

from tiny_models import BYTE_VOCAB, tiny_model
from restdecode.compiled import CompiledModel, compile_forward, eager, is_compiled
from restdecode.latency import profile_key
from test_decode import oracle_generations


def test_greedy_through_the_compiled_forward_equals_transformers_greedy():
    model = tiny_model("llama", vocab_size=BYTE_VOCAB)
    total_steps = total_tokens = 0
    # Oracle trees with right and wrong branches: forwards of several widths, views of the cache.
    for _, want, _, got in oracle_generations(model, compile_forward(model), max_new_tokens=32):
        assert got.token_ids == want
        total_steps += got.stats.steps
        total_tokens += sum(got.stats.accepted_per_step)
    assert total_tokens > 1.5 * total_steps  # drafts were accepted: multi-token forwards ran


def test_the_wrapper_leaves_the_model_eager_and_reads_its_attributes():
    model = tiny_model("qwen2", vocab_size=BYTE_VOCAB)
    compiled = compile_forward(model)
    assert isinstance(compiled, CompiledModel) and is_compiled(compiled) and not is_compiled(model)
    assert compile_forward(compiled) is compiled
    assert eager(compiled) is model and eager(model) is model
    assert compiled.config is model.config and compiled.device == model.device
    assert "forward" not in vars(model)  # model.generate still runs the eager forward
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(compiled(input_ids=ids).logits, model(input_ids=ids).logits,
                                   atol=1e-4, rtol=1e-4)


def test_compiled_profiles_have_their_own_key():
    model = tiny_model("llama", vocab_size=BYTE_VOCAB)
    eager_key, compiled_key = profile_key(model), profile_key(compile_forward(model))
    assert "compiled" not in eager_key  # eager profiles cached before keep their keys
    assert compiled_key.pop("compiled") and compiled_key == eager_key
