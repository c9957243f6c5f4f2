"""A tiny random Llama model written as a GGUF file, for fast llama.cpp backend tests.

Two layers, hidden size 32, a vocabulary of ``vocab_size`` byte-like tokens (a SentencePiece
"llama" vocabulary, no merges: the tests pass token ids, never text). Weights are random normal
with ``init_std``: logits then spread enough that greedy choices are not near-ties.
With ``attention=False`` the attention outputs are zero: each next token depends on the current
token only, so greedy output soon repeats a cycle and drafts taken from the context get accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_llama_gguf(path: Path, *, vocab_size: int = 64, hidden: int = 32, layers: int = 2,
                          heads: int = 4, kv_heads: int = 2, ffn: int = 64, context: int = 512,
                          init_std: float = 0.3, seed: int = 0, attention: bool = True) -> Path:
    """Write the model to ``path`` (overwritten) and return it."""
    from gguf import GGUFWriter, TokenType

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * init_std).astype(np.float32)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)  # all f32
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>".encode() for i in range(vocab_size)])
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_token_types([TokenType.NORMAL] * vocab_size)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_tensor("token_embd.weight", weight(vocab_size, hidden))
    for layer in range(layers):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{block}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"{block}.attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"{block}.attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"{block}.attn_output.weight",
                          weight(hidden, hidden) * (1.0 if attention else 0.0))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(hidden, ffn))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", weight(vocab_size, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
