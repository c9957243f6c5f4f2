"""Cost of one tree verification by width on a backend, and the speedup bound it implies.

For each model (an asset name, ``ASSET:TYPE`` or a .gguf file), measures the backend's latency
profile (``restdecode.latency.measure_profile``: random trees, shuffled rounds, medians) and
prints, per width w (1 pending token + w-1 draft nodes), the milliseconds of one verification,
its ratio to a plain step, and ``w * c(1) / c(w)``: the speedup over plain decoding of a perfect
drafter whose every node is accepted (a chain of w-1 nodes commits w tokens). No real drafter
does better at that width, so the bound says which tree sizes can pay at all.

usage: python bench/verify_cost.py [--backend llamacpp] [--cache-length 256] MODEL [MODEL ...]
e.g.   python bench/verify_cost.py smollm2-135m-instruct smollm2-135m-instruct:q4_0 \\
           smollm2-135m-instruct:f32
"""

from __future__ import annotations

import argparse

WIDTHS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 65)  # 65: REST's 64-node trees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--backend", default="llamacpp", choices=("llamacpp", "transformers"))
    parser.add_argument("--cache-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from restdecode.latency import measure_profile
    from restdecode.models import load, load_llamacpp

    for name in args.models:
        model = load_llamacpp(name)[0] if args.backend == "llamacpp" else load(name)[0]
        profile = measure_profile(model, widths=WIDTHS, cache_lengths=(args.cache_length,),
                                  repeats=args.repeats)
        costs = profile.seconds[0] * 1000
        print(f"\n{name} on {args.backend}, cache {args.cache_length} tokens")
        print("| width | ms | x plain step | perfect-drafter bound |")
        print("|---|---|---|---|")
        for width, cost in zip(WIDTHS, costs):
            print(f"| {width} | {cost:.1f} | {cost / costs[0]:.2f} | "
                  f"{width * costs[0] / cost:.2f}x |")


if __name__ == "__main__":
    main()
