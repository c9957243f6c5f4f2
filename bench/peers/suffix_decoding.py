"""SuffixDecoding (Arctic Inference 0.3.0, vLLM's ``method="suffix"``) as a restdecode drafter.

A bench-only peer: ``bench/replay.py --peer suffix`` replays the recorded outputs through it. It is
no dependency of restdecode; ``bench/peers/build_suffix_decoding.sh`` builds Arctic's suffix tree
extension under ``bench/peers/build/`` and this module imports it from there.

The calls follow vLLM's ``SuffixDecodingProposer`` (vllm/v1/spec_decode/suffix_decoding.py) and
Arctic's own simulator (arctic_inference/suffix_decoding/simulator.py): one request per
generation, started with the prompt; every step's committed tokens appended with
``add_active_response`` (which also extends the request's response in the global tree of past
responses, shared by later requests); ``speculate`` on the last ``max_tree_depth`` tokens of the
context (pending token included); ``stop_request`` when the next generation starts. The global
tree therefore holds past answers in benchmark order, and nothing else (no corpus).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from restdecode.drafting import DraftTree, StepFeedback

ARCTIC_VERSION = "0.3.0"
BUILD_DIR = Path(__file__).resolve().parent / "build"
SOURCE_DIR = BUILD_DIR / f"arctic_inference-{ARCTIC_VERSION}"
BUILD_SCRIPT = Path(__file__).resolve().parent / "build_suffix_decoding.sh"

# vLLM's SpeculativeConfig defaults for method="suffix" (num_speculative_tokens defaults to the
# tree depth; max_spec_offset is not passed, so Arctic's default 0 applies; chain drafts only).
VLLM_DEFAULTS = dict(max_tree_depth=24, max_cached_requests=10000, max_spec_factor=1.0,
                     max_spec_offset=0.0, min_token_prob=0.1, use_tree_spec=False)


def load_cache_class():
    """Arctic's ``SuffixDecodingCache``, from the build under bench/peers/build/."""
    if str(SOURCE_DIR) not in sys.path:
        sys.path.insert(0, str(SOURCE_DIR))
    try:
        from arctic_inference.suffix_decoding import SuffixDecodingCache
    except ImportError as error:
        raise ImportError(
            f"SuffixDecoding (arctic-inference {ARCTIC_VERSION}) is not built: run "
            f"{BUILD_SCRIPT.relative_to(BUILD_SCRIPT.parents[2])} first "
            f"(it builds the extension under {BUILD_DIR}; import failed: {error})"
        ) from error
    return SuffixDecodingCache


class SuffixDecodingDrafter:
    """Arctic's SuffixDecodingCache behind restdecode's drafter protocol.

    ``scores`` of the proposed tree are the conditional probabilities of the nodes (Arctic returns
    path probabilities estimated from the suffix tree counts; a node's score is its path
    probability over its parent's). ``use_tree_spec`` False is what vLLM does (one chain).
    """

    def __init__(self, *, max_tree_depth: int = 24, max_cached_requests: int = 10000,
                 max_spec_tokens: int | None = None, max_spec_factor: float = 1.0,
                 max_spec_offset: float = 0.0, min_token_prob: float = 0.1,
                 use_tree_spec: bool = False) -> None:
        cache_class = load_cache_class()
        self.cache = cache_class(max_tree_depth=max_tree_depth,
                                 max_cached_requests=max_cached_requests)
        self.max_tree_depth = max_tree_depth
        self.max_spec_tokens = max_tree_depth if max_spec_tokens is None else max_spec_tokens
        self.max_spec_factor = max_spec_factor
        self.max_spec_offset = max_spec_offset
        self.min_token_prob = min_token_prob
        self.use_tree_spec = use_tree_spec
        self._next_request = 0
        self._request: int | None = None  # the active request (its prompt is in the cache)
        self._pending: list[int] = []  # tokens committed before the request could start

    def reset(self) -> None:
        """A new generation: the previous request stops (its response stays in the global tree)."""
        if self._request is not None:
            self.cache.stop_request(self._request)
        self._request = None
        self._pending = []

    def observe(self, feedback: StepFeedback) -> None:
        """Append the step's committed tokens to the request's response."""
        committed = [int(t) for t in feedback.committed]
        if self._request is None:
            self._pending += committed  # the prefill's token: the prompt is not known yet
        elif committed:
            self.cache.add_active_response(self._request, committed)

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """Arctic's speculation on the context's last ``max_tree_depth`` tokens."""
        context = [int(t) for t in token_ids]
        if self._request is None:
            self._start(context)
        draft = self.cache.speculate(
            self._request,
            context[-self.max_tree_depth:],
            max_spec_tokens=self.max_spec_tokens,
            max_spec_factor=self.max_spec_factor,
            max_spec_offset=self.max_spec_offset,
            min_token_prob=self.min_token_prob,
            use_tree_spec=self.use_tree_spec,
        )
        return to_draft_tree(draft.token_ids, draft.parents, draft.probs, draft.match_len)

    def _start(self, context: list[int]) -> None:
        prompt_length = len(context) - len(self._pending)
        if prompt_length < 0 or context[prompt_length:] != self._pending:
            raise ValueError("context does not end with the tokens observed since reset()")
        self._request = self._next_request
        self._next_request += 1
        self.cache.start_request(self._request, context[:prompt_length])
        if self._pending:
            self.cache.add_active_response(self._request, self._pending)
        self._pending = []


def to_draft_tree(tokens: Sequence[int], parents: Sequence[int], probs: Sequence[float],
                  match_length: int = 0) -> DraftTree:
    """Arctic's draft (token ids, parent indices, path probabilities) as a :class:`DraftTree`
    scored with conditional probabilities."""
    parents = np.asarray(parents, dtype=np.int64)
    if len(parents) == 0:
        return DraftTree.empty()
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) != len(parents):
        probs = np.ones(len(parents))
    parent_probs = np.where(parents >= 0, probs[np.maximum(parents, 0)], 1.0)
    scores = np.divide(probs, parent_probs, out=np.ones_like(probs), where=parent_probs > 0)
    return DraftTree(np.asarray(tokens, dtype=np.int64), parents, np.clip(scores, 0.0, 1.0),
                     int(match_length))


def check_against_simulator(prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                            **config) -> tuple[list[int], list[int]]:
    """Tokens committed per step by our replay of :class:`SuffixDecodingDrafter` and by Arctic's
    own simulator (``simulator.suffix_decode``), over the same requests in the same order.

    The simulator has no prefill: it is given the prompt followed by the output's first token
    (which our replay gets from the prefill), and the rest of the output. Its global tree then
    lacks each response's first token, so the two agree exactly only with the global tree off
    (``max_cached_requests=0``); with it on they differ by a few steps at most.
    """
    import types

    from restdecode.benchmark.replay import replay

    load_cache_class()
    if "pandas" not in sys.modules:  # simulator.py imports it for its CLI; suffix_decode needs none
        try:
            import pandas  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pandas")
            stub.DataFrame = object
            sys.modules["pandas"] = stub
    from arctic_inference.suffix_decoding import SuffixDecodingCache
    from arctic_inference.suffix_decoding.simulator import suffix_decode

    drafter = SuffixDecodingDrafter(**config)
    ours = [step.committed for prompt, output in zip(prompts, outputs)
            for step in replay(drafter, prompt, output)]
    cache = SuffixDecodingCache(max_tree_depth=drafter.max_tree_depth,
                                max_cached_requests=config.get("max_cached_requests", 10000))
    theirs = []
    for request, (prompt, output) in enumerate(zip(prompts, outputs)):
        results = suffix_decode(
            cache, request, np.asarray(list(prompt) + list(output[:1]), dtype=np.int32),
            np.asarray(output[1:], dtype=np.int32), drafter.max_spec_tokens,
            drafter.max_spec_factor, drafter.min_token_prob, drafter.use_tree_spec, True)
        theirs += [r["num_out_toks"] for r in results]
    return ours, theirs


def main() -> None:
    """Cross-check against Arctic's simulator on a bench run's recorded hf-greedy outputs."""
    import argparse
    import gzip
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path, help="results.json.gz of a bench run")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()

    from restdecode.benchmark.runner import encode_prompt
    from restdecode.models import load_tokenizer
    from restdecode.workloads import load_workload

    with gzip.open(args.results, "rt", encoding="utf-8") as file:
        run = json.load(file)
    outputs = {row["prompt_id"]: row["token_ids"] for row in run["rows"]
               if row["method"] == "hf-greedy" and row["turn"] == 1}
    tokenizer = load_tokenizer(run["model"]["name"])
    prompts = [p for p in load_workload(run["workload"]) if p.id in outputs][: args.limit]
    prompt_ids = [encode_prompt(tokenizer, p.text, p.messages)[0].tolist() for p in prompts]
    output_ids = [outputs[p.id] for p in prompts]
    for label, config in [("global tree off", dict(max_cached_requests=0)),
                          ("global tree on (vLLM defaults)", {}),
                          ("tree speculation, factor 4, min prob 0", dict(
                              use_tree_spec=True, max_spec_factor=4.0, min_token_prob=0.0))]:
        ours, theirs = check_against_simulator(prompt_ids, output_ids, **config)
        print(f"{label}: replay {len(ours)} steps, simulator {len(theirs)} steps,"
              f" identical per step: {ours == theirs}")


if __name__ == "__main__":
    main()
