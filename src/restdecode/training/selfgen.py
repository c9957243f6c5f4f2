"""Training text written by the model itself: its greedy answers to corpus prompts.

A drafter trained on corpus text learns what the model would say *after human text*; at decoding
time it drafts after the model's own words, where the model is far more predictable (every token
of a greedy answer is the model's first choice). Medusa-2 and EAGLE train on the model's own
generations for this reason. :func:`generated_documents` turns the first texts of a corpus into
user prompts (the chat template when the tokenizer has one), decodes the model's greedy answers
with batched plain steps, and returns each prompt + answer as one training document, in the
token form decoding sees. The answers are kept in a JSON-lines file and reused by later runs
(``--resume``, or another kind of drafter on the same data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from restdecode.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GENERATED_FILE = "generated.jsonl"


def generated_documents(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                        texts: Iterable[str], count: int, *, new_tokens: int = 192,
                        prompt_tokens: int = 96, rows: int = 16, cache: str | Path | None = None,
                        progress: bool = True) -> list[str]:
    """The model's greedy answers (``new_tokens`` each) to the first ``count`` of ``texts``,
    each cut to its first ``prompt_tokens`` tokens and asked as a user message; every document
    is the prompt as the model saw it (chat template included) followed by the answer.

    ``rows`` answers are decoded at a time (:func:`restdecode.generate_batch`, plain steps). With
    ``cache`` (a JSON-lines file), answers already there for the same prompts are reused and new
    ones appended as they finish, so an interrupted run loses none."""
    if count < 1 or new_tokens < 1 or prompt_tokens < 1 or rows < 1:
        raise ModelError("self-generated data needs count, new_tokens, prompt_tokens and rows >= 1")
    prompts = [_cut(tokenizer, text, prompt_tokens) for text in islice(texts, count)]
    if not prompts:
        raise ModelError("no text to write prompts from")
    kept = _read_cache(cache) if cache is not None else {}
    missing = [p for p in prompts if p not in kept]
    if missing:
        kept |= _generate(model, tokenizer, missing, new_tokens, rows, cache, progress)
    return [kept[p] for p in prompts]


def _cut(tokenizer: "PreTrainedTokenizerBase", text: str, prompt_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:prompt_tokens]
    return tokenizer.decode(ids)


def _generate(model, tokenizer, prompts: list[str], new_tokens: int, rows: int,
              cache: str | Path | None, progress: bool) -> dict[str, str]:
    """Decode ``prompts`` ``rows`` at a time; each finished batch is appended to ``cache``."""
    import torch
    from tqdm.auto import tqdm

    from restdecode.batch import BatchRequest, generate_batch
    from restdecode.decode import prompt_token_ids

    chat = getattr(tokenizer, "chat_template", None) is not None
    documents: dict[str, str] = {}
    with torch.inference_mode(), tqdm(total=len(prompts), desc="self-generated answers",
                                      unit="answer", disable=not progress) as bar:
        for start in range(0, len(prompts), rows):
            group = prompts[start:start + rows]
            ids = [prompt_token_ids(tokenizer, None if chat else p,
                                    [{"role": "user", "content": p}] if chat else None)
                   for p in group]
            results = generate_batch(model, tokenizer, [BatchRequest(input_ids=i) for i in ids],
                                     max_new_tokens=new_tokens, progress=False)
            batch = {p: tokenizer.decode(i + r.token_ids)
                     for p, i, r in zip(group, ids, results)}
            if cache is not None:
                _append_cache(cache, batch)
            documents |= batch
            bar.update(len(group))
    return documents


def _read_cache(path: str | Path) -> dict[str, str]:
    """Prompt -> document from the cache file (missing: none; a torn last line is skipped)."""
    kept: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    kept[record["prompt"]] = record["document"]
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return kept


def _append_cache(path: str | Path, documents: dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for prompt, document in documents.items():
            handle.write(json.dumps({"prompt": prompt, "document": document}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
