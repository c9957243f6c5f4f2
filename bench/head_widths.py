"""What the output head costs by row count on this machine, and the padding table restdecode
derives from it (restdecode.head). Not a test; run it alone on the machine.

    .venv/bin/python bench/head_widths.py --model smollm2-135m-instruct --max-width 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="timed products per row count")
    args = parser.parse_args(argv)

    from restdecode.head import measure_head_widths
    from restdecode.models import load

    model, _ = load(args.model)
    head = model.get_output_embeddings()
    rows = torch.randn(args.max_width, head.in_features)
    print(f"{args.model}: head {tuple(head.weight.shape)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    widths = measure_head_widths(head, max_width=args.max_width)
    print("| rows | head ms (median) | padded to |")
    print("|---|---|---|")
    with torch.inference_mode():
        for m in range(1, args.max_width + 1):
            F.linear(rows[:m], head.weight, head.bias)
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                F.linear(rows[:m], head.weight, head.bias)
                seconds.append(time.perf_counter() - started)
            median = sorted(seconds)[len(seconds) // 2]
            print(f"| {m} | {1000 * median:.1f} | {widths[m - 1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
