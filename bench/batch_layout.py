"""Packed vs padded KV layout for batched verification, on SmolLM2-135M shapes (random weights).

One forward over B rows of L cached positions each, w slots per row (a chain; "16+1" = one row
with 16 slots, the others 1, as the batch planner makes), timed three ways:
  packed:     batch dim 1, B*L cached keys, Q = B*w queries, block mask (our layout);
  padded:     batch dim B, L cached keys per row, w queries per row, per-row mask;
  sequential: B single-row forwards (what B separate sessions cost);
  regions:    restdecode's TransformersBatchSession as it is now: packed tokens, a cache region
              per row, attention per row (queries padded to the widest row inside attention only).
Usage: .venv/bin/python bench/batch_layout.py [--rows 8] [--lengths 256 1024] [--widths 1 4 16+1]
       [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from restdecode.backends.transformers_batch import TransformersBatchSession
from restdecode.drafting.tree import DraftTree


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
    parser.add_argument("--widths", nargs="+", default=["1", "4", "16+1"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, rows = smollm2_shapes(), args.rows
    print(f"torch threads {torch.get_num_threads()}, B={rows}")
    print("L     w     packed ms  padded ms  sequential ms  regions ms")
    for length in args.lengths:
        session = TransformersBatchSession(model)
        with torch.inference_mode():
            row_ids = [session.add_row([1] * length)[0] for _ in range(rows)]
        packed_cache = filled_cache(model, 1, rows * length)
        padded_cache = filled_cache(model, rows, length)
        single_cache = filled_cache(model, 1, length)
        for spec in args.widths:
            first, _, rest = spec.partition("+")
            widths = [int(first)] + [int(rest or first)] * (rows - 1)
            wide = max(widths)
            owner = torch.arange(rows).repeat_interleave(length)
            query_row = torch.arange(rows).repeat_interleave(torch.tensor(widths))
            causal = [torch.ones(w, w, dtype=torch.bool).tril() for w in widths]
            packed_mask = additive(torch.cat([owner.unsqueeze(0) == query_row.unsqueeze(1),
                                              torch.block_diag(*causal)], dim=1))[None, None]
            positions = torch.cat([length + torch.arange(w) for w in widths])
            # Padded: every row's queries padded to the widest tree (pad slots see the past only).
            padded_mask = additive(torch.cat([torch.ones(wide, length, dtype=torch.bool),
                                              torch.ones(wide, wide, dtype=torch.bool).tril()],
                                             dim=1))[None, None].expand(rows, 1, -1, -1)
            padded_positions = (length + torch.arange(wide)).repeat(rows, 1)

            def forward(cache, ids, mask, pos):
                model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                      use_cache=True)
                cache.crop(-ids.shape[1])

            def sequential():
                for w in widths:
                    mask = additive(torch.cat([torch.ones(w, length, dtype=torch.bool),
                                               torch.ones(w, w, dtype=torch.bool).tril()], dim=1))
                    forward(single_cache, torch.ones(1, w, dtype=torch.long), mask[None, None],
                            (length + torch.arange(w)).unsqueeze(0))

            repeats = args.repeats
            with torch.inference_mode():
                packed = timed(lambda: forward(packed_cache,
                                               torch.ones(1, sum(widths), dtype=torch.long),
                                               packed_mask, positions.unsqueeze(0)), repeats)
                padded = timed(lambda: forward(padded_cache,
                                               torch.ones(rows, wide, dtype=torch.long),
                                               padded_mask, padded_positions), repeats)
                single = timed(sequential, repeats)
                chains = [DraftTree(np.ones(w - 1, dtype=np.int64), np.arange(w - 1) - 1).compile()
                          for w in widths]

                def regions_step():
                    session.verify([(row, 1, chain) for row, chain in zip(row_ids, chains)])
                    for row in row_ids:
                        session.commit(row, [])  # drop the slots: the cache stays as it was

                by_rows = timed(regions_step, repeats)
            width = spec
            print(f"{length:<5} {width:<5} {packed * 1e3:9.1f}  {padded * 1e3:9.1f}  {single * 1e3:13.1f}"
                  f"  {by_rows * 1e3:10.1f}")


if __name__ == "__main__":
    main()
