"""Tiny, fully offline model assets for CLI tests: a byte-level BPE tokenizer trained in
milliseconds on a few sentences, a random 2-layer Llama on top, and a JSONL corpus to build a
datastore from. Everything is saved as a normal Hugging Face directory, as ``--model`` expects."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "def add(a, b):\n    return a + b\n",
    "speculative decoding drafts tokens and verifies them in one forward pass",
    "retrieval finds continuations of the longest suffix in a datastore",
    "hello, how are you today? I am fine, thank you very much.",
    "for i in range(10):\n    print(i)\n",
]

PROMPTS = [
    {"id": "raw", "prompt": SENTENCES[0]},
    {"id": "chat", "messages": [{"role": "user", "content": SENTENCES[3]}]},
]


def make_tokenizer():
    """A byte-level BPE tokenizer (vocab ~320) with a chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(SENTENCES * 5, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        pad_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model_dir(path: Path, *, seed: int = 0) -> Path:
    """Save a random 2-layer Llama and the tiny tokenizer under ``path``; return ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.3,  # peaked: no greedy near-ties
    )
    model = LlamaForCausalLM(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_corpus(path: Path, model_dir: Path, max_new_tokens: int = 48) -> Path:
    """A ``jsonl:PATH:text`` corpus: the sentences, plus the tiny model's own greedy answers to
    the test prompts, so that retrieval drafts really get accepted (a random model's output is
    otherwise found nowhere)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    documents = list(SENTENCES)
    for text, messages in ((p.get("prompt"), p.get("messages")) for p in PROMPTS):
        if messages is not None:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=messages is None).input_ids
        with torch.inference_mode():
            output = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id)
        documents.append(tokenizer.decode(output[0], skip_special_tokens=False))
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    return path


def write_prompts(path: Path) -> Path:
    """A ``prompts:PATH`` JSONL file with one raw prompt and one chat prompt."""
    path.write_text("".join(json.dumps(line) + "\n" for line in PROMPTS), encoding="utf-8")
    return path
