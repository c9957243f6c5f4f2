"""Self-generated training text: the model's own greedy answers to corpus prompts, cached and
reused; training over a finite pool of it runs pass after pass without ever training on the
held-out windows; the CLI trains heads on it."""

from __future__ import annotations

import json

import pytest

from test_early_exit_training import documents, jsonl_data, model, settings
from tiny_models import byte_tokenizer
from restdecode.decode import generate, prompt_token_ids
from restdecode.training.early_exit import _passes
from restdecode.training.heads import train_heads
from restdecode.training.selfgen import generated_documents


def test_documents_are_the_prompts_and_the_models_greedy_answers(tmp_path):
    target, tokenizer = model(), byte_tokenizer()
    texts = documents(5)
    made = generated_documents(target, tokenizer, texts, 5, new_tokens=12, prompt_tokens=20,
                               rows=2, cache=tmp_path / "gen.jsonl", progress=False)
    assert len(made) == 5
    for text, document in zip(texts, made):
        prompt = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:20])
        messages = [{"role": "user", "content": prompt}]  # the tokenizer has a chat template
        answer = generate(target, tokenizer, messages=messages, max_new_tokens=12)  # alone
        asked = prompt_token_ids(tokenizer, None, messages)
        assert document == tokenizer.decode(asked + answer.token_ids)
        assert document.startswith("<user>" + prompt) and len(answer.token_ids) == 12
    # Cached: asked again (even for fewer), nothing is decoded; a model that cannot decode
    # proves it.
    assert generated_documents(None, tokenizer, texts, 3, new_tokens=12, prompt_tokens=20,
                               cache=tmp_path / "gen.jsonl", progress=False) == made[:3]
    lines = (tmp_path / "gen.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["document"] == made[0]


def test_a_torn_cache_line_is_skipped_and_its_answer_decoded_again(tmp_path):
    target, tokenizer = model(), byte_tokenizer()
    cache = tmp_path / "gen.jsonl"
    made = generated_documents(target, tokenizer, documents(3), 3, new_tokens=6,
                               cache=cache, progress=False)
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # killed mid-write
    again = generated_documents(target, tokenizer, documents(3), 3, new_tokens=6,
                                cache=cache, progress=False)
    assert again == made


def test_passes_give_every_window_once_per_pass_in_new_orders():
    pool = [[i] for i in range(10)]
    stream = _passes(pool, seed=3)
    first, second = [next(stream) for _ in range(10)], [next(stream) for _ in range(10)]
    assert sorted(first) == sorted(second) == pool and first != second


def test_training_repeats_a_small_pool_but_never_its_held_out_windows(tmp_path, monkeypatch):
    """6 documents give few windows: 40 steps need several passes over the training ones, and
    not one trained batch holds a held-out window."""
    import restdecode.training.early_exit as early_exit

    seen = []
    real_pairs = early_exit.EarlyExitRecipe.pairs

    def recording(self, model, batch):
        seen.append(batch.clone())
        return real_pairs(self, model, batch)

    monkeypatch.setattr(early_exit.EarlyExitRecipe, "pairs", recording)
    report = early_exit.train_early_exit(model(), byte_tokenizer(), documents(6), tmp_path / "x",
                                         settings(max_steps=40, repeat=True, held_out=4),
                                         progress=False)
    assert report.steps == 40
    held_out = {tuple(w.tolist()) for w in seen[0]}  # the first pairs are the held-out split
    trained = [tuple(w.tolist()) for batch in seen[2:] for w in batch]  # [1]: untrained eval
    assert len(trained) >= 40 * 4 - 4 and not held_out & set(trained)
    assert len(set(trained)) < len(trained)  # windows came back: passes


def test_the_cli_trains_heads_on_self_generated_answers(tmp_path, capsys):
    from test_engine_draft_model import save
    from restdecode.cli import main

    target_dir = save(model(), tmp_path / "target")
    out = tmp_path / "heads"
    arguments = ["train-drafter", "--model", str(target_dir), "--data", jsonl_data(tmp_path),
                 "--out", str(out), "--kind", "heads", "--heads", "2", "--vocabulary", "32",
                 "--max-steps", "3", "--window", "32", "--self-generate", "6",
                 "--answer-tokens", "40", "-q"]
    assert main(arguments) == 0
    assert "2 draft heads over 32 tokens, 3 steps" in capsys.readouterr().out
    facts = json.loads((out / "drafter.json").read_text())
    assert "greedy answers (40 tokens) to its first 6 texts" in facts["data"]
    assert len((out / "generated.jsonl").read_text().splitlines()) == 6
    assert main(arguments + ["--resume"]) == 0  # reuses the answers, continues the steps
    assert json.loads((out / "drafter.json").read_text())["steps"] == 6
    assert len((out / "generated.jsonl").read_text().splitlines()) == 6
    assert main(arguments[:-5] + ["--self-generate=-1", "-q"]) == 2
