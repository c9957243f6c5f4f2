"""Shared fixtures: tiny random decoder-only models (2 layers, GQA) for fast unit tests."""

from __future__ import annotations

import torch

TINY_ARCHITECTURES = ("llama", "qwen2", "gemma3")



def tiny_model(arch: str, *, vocab_size: int = 64, attn: str = "sdpa", seed: int = 0,
               init_std: float = 0.3, sliding_window: int = 6, layers: int = 2):
    """A random model of ``arch`` (2 layers unless told) with grouped-query attention (4 heads,
    2 KV heads); ``layers=1`` with another ``seed`` makes a smaller draft model.

    A large ``init_std`` makes next-token distributions peaked, so greedy decoding has no
    accidental near-ties; Gemma 3 alternates a sliding-window layer (window ``sliding_window``)
    with a full-attention layer.
    """
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=256, initializer_range=init_std,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    elif arch == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif arch == "gemma3":
        config = Gemma3TextConfig(**common, sliding_window=sliding_window,
                                  layer_types=(["sliding_attention", "full_attention"]
                                               * layers)[:layers])
        cls = Gemma3ForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


BYTE_VOCAB = 3 + 256  # <pad>, <s>, </s>, then one token per byte


def byte_tokenizer():
    """A real fast tokenizer with one token per byte (ids 3..258) and pad/bos/eos = 0/1/2.

    Characters outside ASCII span several tokens, which exercises incremental detokenisation.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {ch: 3 + i for i, ch in enumerate(byte_chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tokenizer



def trie_tree(sequences):
    """A DraftTree holding every sequence of ``sequences`` as a root path (shared prefixes merged)."""
    import numpy as np

    from restdecode.drafting.tree import DraftTree

    tokens, parents, index = [], [], {}
    for sequence in sequences:
        parent = -1
        for depth in range(len(sequence)):
            key = tuple(int(t) for t in sequence[: depth + 1])
            if key not in index:
                index[key] = len(tokens)
                tokens.append(key[-1])
                parents.append(parent)
            parent = index[key]
    return DraftTree(np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64))


class OracleDrafter:
    """Test drafter that knows the true continuation and proposes it as a tree of several branches:
    the truth cut at a random depth, a copy with one token corrupted, and a random chain."""

    def __init__(self, prompt_length: int, reference, vocab_size: int, *, depth: int = 6, seed: int = 0):
        import numpy as np

        self.prompt_length = prompt_length
        self.reference = list(reference)
        self.vocab_size = vocab_size
        self.depth = depth
        self.rng = np.random.default_rng(seed)
        self.observed: list[int] = []

    def propose(self, token_ids):
        done = len(token_ids) - self.prompt_length  # generated so far, pending token included
        truth = self.reference[done: done + self.depth]
        rng = self.rng
        corrupted = list(truth)
        if corrupted:
            corrupted[int(rng.integers(len(corrupted)))] = int(rng.integers(self.vocab_size))
        branches = [truth[: int(rng.integers(0, len(truth) + 1))], corrupted,
                    rng.integers(0, self.vocab_size, int(rng.integers(1, 4))).tolist()]
        rng.shuffle(branches)
        return trie_tree([b for b in branches if len(b)])

    def observe(self, feedback) -> None:
        self.observed.extend(int(t) for t in feedback.committed)

    def reset(self) -> None:
        self.observed = []


class RandomTreeDrafter:
    """Random small trees: with a tiny vocabulary their tokens are often, not always, right."""

    def __init__(self, vocab_size: int, rng):
        self.vocab_size, self.rng = vocab_size, rng

    def propose(self, token_ids):
        rng = self.rng
        sequences = [rng.integers(0, self.vocab_size, int(rng.integers(1, 4))).tolist()
                     for _ in range(int(rng.integers(0, 4)))]
        return trie_tree(sequences)

    def observe(self, feedback):
        pass

    def reset(self):
        pass


class LetterTokenizer:
    """Decoding only (generation is given input_ids): one letter per token id."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i) for i in ids)


SAMPLING_VOCAB = 8
SAMPLING_PROMPT = [1, 5, 3]


def sampling_model_and_distribution(temperature: float, top_p: float, arch: str = "qwen2"):
    """A vocab-8 model of ``arch`` (no end-of-sequence) and the exact distribution of its first
    3 sampled tokens after ``SAMPLING_PROMPT``: ``{(a, b, c): probability}``, from one batched
    forward over every 2-token continuation."""
    from restdecode.accept import Sampler

    vocab, prompt = SAMPLING_VOCAB, SAMPLING_PROMPT
    model = tiny_model(arch, vocab_size=vocab, init_std=0.15, seed=4)
    model.generation_config.eos_token_id = None
    pairs = torch.cartesian_prod(torch.arange(vocab), torch.arange(vocab))
    batch = torch.cat([torch.tensor(prompt).expand(len(pairs), -1), pairs], dim=1)
    with torch.inference_mode():
        logits = model(batch).logits.float()
    sampler = Sampler(temperature, 0, top_p)
    expected = {}
    for row, (a, b) in enumerate(pairs.tolist()):
        p1 = sampler.probs(logits[row, len(prompt) - 1])[a]
        p2 = sampler.probs(logits[row, len(prompt)])[b]
        p3 = sampler.probs(logits[row, len(prompt) + 1])
        for c in range(vocab):
            expected[(a, b, c)] = float(p1 * p2 * p3[c])
    return model, expected


def random_trees(vocab_size: int, max_nodes: int):
    """A hypothesis strategy: random draft trees over ``vocab_size`` tokens, the empty tree (a
    plain step) included."""
    import numpy as np
    from hypothesis import strategies as st

    from restdecode.drafting.tree import DraftTree

    @st.composite
    def trees(draw):
        n = draw(st.integers(0, max_nodes))
        parents = [draw(st.integers(-1, i - 1)) for i in range(n)]
        tokens = draw(st.lists(st.integers(0, vocab_size - 1), min_size=n, max_size=n))
        return DraftTree(np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64))

    return trees()
