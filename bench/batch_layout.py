"""Packed vs padded KV layout for batched verification, on SmolLM2-135M shapes (random weights).

One forward over B rows of L cached positions each, w slots per row (a chain), timed three ways:
  packed:     batch dim 1, B*L cached keys, Q = B*w queries, block mask (our layout);
  padded:     batch dim B, L cached keys per row, w queries per row, per-row mask;
  sequential: B single-row forwards (what B separate sessions cost).
Usage: .venv/bin/python bench/batch_layout.py [--rows 8] [--lengths 256 1024] [--widths 1 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM


def smollm2_shapes() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                         dtype=torch.float32).eval()


def filled_cache(model, batch: int, length: int) -> DynamicCache:
    config = model.config
    shape = (batch, config.num_key_value_heads, length, config.head_dim)
    cache = DynamicCache()
    for layer in range(config.num_hidden_layers):
        cache.update(torch.randn(shape), torch.randn(shape), layer)
    return cache


def additive(visible: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(visible.shape)
    return mask.masked_fill_(~visible, torch.finfo(torch.float32).min)


def timed(run, repeats: int = 3) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    model, rows = smollm2_shapes(), args.rows
    print(f"torch threads {torch.get_num_threads()}, B={rows}")
    print("L     w   packed ms  padded ms  sequential ms")
    for length in args.lengths:
        packed_cache = filled_cache(model, 1, rows * length)
        padded_cache = filled_cache(model, rows, length)
        single_cache = filled_cache(model, 1, length)
        for width in args.widths:
            owner = torch.arange(rows).repeat_interleave(length)
            query_row = torch.arange(rows).repeat_interleave(width)
            step = torch.arange(width)
            causal = step.unsqueeze(0) <= step.unsqueeze(1)
            packed_mask = additive(torch.cat([owner.unsqueeze(0) == query_row.unsqueeze(1),
                                              torch.block_diag(*[causal] * rows)], dim=1))[None, None]
            padded_mask = additive(torch.cat([torch.ones(width, length, dtype=torch.bool), causal],
                                             dim=1))[None, None].expand(rows, 1, -1, -1)
            positions = (length + step).repeat(rows)

            def forward(cache, ids, mask, pos):
                model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                      use_cache=True)
                cache.crop(-ids.shape[1])

            with torch.inference_mode():
                packed = timed(lambda: forward(packed_cache, torch.ones(1, rows * width, dtype=torch.long),
                                               packed_mask, positions.unsqueeze(0)))
                padded = timed(lambda: forward(padded_cache, torch.ones(rows, width, dtype=torch.long),
                                               padded_mask, positions.view(rows, width)))
                single = timed(lambda: [forward(single_cache, torch.ones(1, width, dtype=torch.long),
                                                padded_mask[:1], positions[:width].unsqueeze(0))
                                        for _ in range(rows)])
            print(f"{length:<5} {width:<3} {packed * 1e3:9.1f}  {padded * 1e3:9.1f}  {single * 1e3:13.1f}")


if __name__ == "__main__":
    main()
