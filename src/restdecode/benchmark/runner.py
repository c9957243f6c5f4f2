"""Running methods over a workload: interleaved per prompt, warmed up, timed the same way.

Timing, identical for every method (``time.perf_counter`` around ``Method.generate``, model
already loaded, prompt already tokenized):

* ``e2e_s``: one generation of up to ``max_new_tokens`` tokens, prefill included;
* ``prefill_s``: a separate generation of the same prompt with ``max_new_tokens=1`` (the
  prefill forward plus choosing the first token), run just before the full one;
* ``decode_s = e2e_s - prefill_s``: the time spent on the tokens after the first one.

This subtraction is used for every method, ours included, rather than a timestamp taken inside
one implementation, so that no method is timed by a different clock. For ``hf-prompt-lookup``
the first forward of the full run also verifies the first candidates; that little extra work
lands in its decode time.

Every row is compared with the run's baseline method (``hf-greedy``, or ``llamacpp-greedy`` on
the llamacpp backend: :func:`restdecode.benchmark.methods.baseline_for`) on the same turn.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

from restdecode.benchmark.methods import HF_GREEDY, Method

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from restdecode.workloads import Prompt

WARMUP_TOKENS = 16


@dataclass(frozen=True)
class Baseline:
    """The method every row's tokens are compared with (None: no comparison), and the end
    tokens a comparison ignores when they come last (one loop may return one, another not)."""

    method: str | None = HF_GREEDY
    end_ids: frozenset[int] = frozenset()


@dataclass
class Row:
    """One (prompt, turn, method) measurement; ``identical_to_baseline`` is None without a baseline."""

    prompt_id: str
    turn: int
    method: str
    prompt_tokens: int
    new_tokens: int
    e2e_s: float
    prefill_s: float
    decode_s: float
    steps: int
    mean_accepted: float
    accepted_per_step: list[int]
    identical_to_baseline: bool | None
    text: str
    token_ids: list[int] = field(repr=False)
    completion: str | None = None  # HumanEval: the text after truncation at stop sequences
    passed: bool | None = None  # HumanEval: did the completion pass the tests

    def to_json(self) -> dict:
        """The row as results.json stores it."""
        return asdict(self)


def encode_prompt(tokenizer: "PreTrainedTokenizerBase", text: str | None = None,
                  messages: list[dict] | None = None) -> "torch.Tensor":
    """Token ids (1, n) of a raw prompt, or of chat messages through the chat template."""
    if messages is not None:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    else:
        encoded = tokenizer(text, return_tensors="pt")
    return encoded.input_ids


def warm_up(methods: list[Method], input_ids: "torch.Tensor", max_new_tokens: int) -> None:
    """One untimed short generation per method (lazy init, JIT compilation, allocator); then
    each method forgets that output, so no memory of it helps the measured run."""
    for method in methods:
        method.generate(input_ids, min(max_new_tokens, WARMUP_TOKENS))
        method.forget()


def measure(method: Method, input_ids: "torch.Tensor", max_new_tokens: int):
    """(run, e2e_s, prefill_s) for one generation, timed as the module docstring says."""
    start = time.perf_counter()
    method.generate(input_ids, 1)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    run = method.generate(input_ids, max_new_tokens)
    e2e_s = time.perf_counter() - start
    return run, e2e_s, prefill_s


def run_turn(methods: list[Method], tokenizer: "PreTrainedTokenizerBase", prompt_id: str, turn: int,
             inputs: dict[str, "torch.Tensor"], max_new_tokens: int,
             baseline: Baseline | None = None) -> list[Row]:
    """Every method once on its own input ids for this turn, in order; one row per method
    (compared with ``baseline``; default: hf-greedy, the tokenizer's EOS ignored at the end)."""
    rows = []
    for method in methods:
        input_ids = inputs[method.name]
        run, e2e_s, prefill_s = measure(method, input_ids, max_new_tokens)
        steps = len(run.accepted_per_step)
        rows.append(Row(
            prompt_id=prompt_id, turn=turn, method=method.name,
            prompt_tokens=int(input_ids.shape[1]), new_tokens=len(run.token_ids),
            e2e_s=e2e_s, prefill_s=prefill_s, decode_s=max(e2e_s - prefill_s, 0.0),
            steps=steps, mean_accepted=len(run.token_ids) / steps if steps else 0.0,
            accepted_per_step=run.accepted_per_step, identical_to_baseline=None,
            text=tokenizer.decode(run.token_ids, skip_special_tokens=True),
            token_ids=run.token_ids,
        ))
    if baseline is None:
        baseline = Baseline(end_ids=frozenset({tokenizer.eos_token_id}) - {None})
    mark_identical(rows, baseline)
    return rows


def mark_identical(rows: list[Row], baseline: Baseline) -> None:
    """Set ``identical_to_baseline`` on rows of one turn (a trailing end token is not compared)."""
    reference = next((row for row in rows if row.method == baseline.method), None)
    if reference is None:
        return
    expected = _without_trailing_end(reference.token_ids, baseline.end_ids)
    for row in rows:
        row.identical_to_baseline = _without_trailing_end(row.token_ids, baseline.end_ids) == expected


def _without_trailing_end(token_ids: list[int], end_ids: frozenset[int]) -> list[int]:
    if token_ids and token_ids[-1] in end_ids:
        return token_ids[:-1]
    return token_ids


def run_prompt(methods: list[Method], tokenizer: "PreTrainedTokenizerBase", prompt: "Prompt",
               max_new_tokens: int, turns: int, baseline: Baseline | None = None) -> list[Row]:
    """All turns of one prompt; turn 2 puts each method's own turn-1 answer in the history."""
    if prompt.messages is None:
        input_ids = encode_prompt(tokenizer, text=prompt.text)
        return run_turn(methods, tokenizer, prompt.id, 1, {m.name: input_ids for m in methods},
                        max_new_tokens, baseline)
    histories = {m.name: list(prompt.messages) for m in methods}
    user_turns = prompt.meta.get("turns") or [prompt.messages[-1]["content"]]
    rows: list[Row] = []
    for turn in range(1, min(turns, len(user_turns)) + 1):
        if turn > 1:
            for name, history in histories.items():
                history.append({"role": "user", "content": user_turns[turn - 1]})
        inputs = {name: encode_prompt(tokenizer, messages=h) for name, h in histories.items()}
        turn_rows = run_turn(methods, tokenizer, prompt.id, turn, inputs, max_new_tokens, baseline)
        for row in turn_rows:
            histories[row.method].append({"role": "assistant", "content": row.text})
        rows.extend(turn_rows)
    return rows


def run_workload(methods: list[Method], tokenizer: "PreTrainedTokenizerBase", prompts: list["Prompt"],
                 *, max_new_tokens: int, turns: int = 1, progress: bool = True,
                 on_prompt_done: Callable[[list[Row]], None] | None = None,
                 on_warmed_up: Callable[[], None] | None = None,
                 baseline: Baseline | None = None) -> list[Row]:
    """Warm every method up once, then run them interleaved per prompt (A B C, A B C, ...);
    rows are compared with ``baseline`` (see :func:`run_turn`)."""
    from tqdm.auto import tqdm

    if not prompts:
        return []
    first = prompts[0]
    warm_up(methods, encode_prompt(tokenizer, first.text, first.messages), max_new_tokens)
    if on_warmed_up is not None:
        on_warmed_up()
    rows: list[Row] = []
    for prompt in tqdm(prompts, desc="prompts", unit="prompt", disable=not progress):
        prompt_rows = run_prompt(methods, tokenizer, prompt, max_new_tokens, turns, baseline)
        if on_prompt_done is not None:
            on_prompt_done(prompt_rows)
        rows.extend(prompt_rows)
    return rows
