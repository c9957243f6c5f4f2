"""The decoding loop: prefill, then steps of draft -> verify -> accept -> commit.

The loop keeps one *pending* token: chosen, part of the output, not yet in the KV cache. Each step
asks the drafter for a tree below it, verifies the tree in one forward pass, accepts the longest
path the model agrees with plus one bonus token (the next pending token), and commits the KV
entries of that path. An empty tree is a plain decoding step. Greedy output is token-identical to
plain greedy decoding; sampled output has exactly the model's (processed) distribution.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from restdecode.accept import Sampler, accept_greedy, accept_sampling
from restdecode.backends import Backend, Session, as_backend
from restdecode.drafting.base import Drafter, NoDrafter, StepFeedback, reads_hidden_states
from restdecode.drafting.tree import DraftTree
from restdecode.errors import DecodingError
from restdecode.options import GenerationOptions, check_messages, resolve_options


@dataclass
class GenerationStats:
    """Counts and timings of one generation (seconds from ``time.perf_counter``).

    ``accepted_per_step`` counts the tokens each step added (accepted drafts + bonus), so its mean
    is the tokens per step; the first token comes from the prefill and belongs to no step. The
    ``time_*`` fields split the decoding time (after the prefill): ``time_other`` is the rest
    (detokenisation, stop checks, bookkeeping).
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0
    accepted_per_step: list[int] = field(default_factory=list)
    tree_size_per_step: list[int] = field(default_factory=list)
    time_prefill: float = 0.0
    time_draft: float = 0.0
    time_verify: float = 0.0
    time_accept_commit: float = 0.0
    time_other: float = 0.0
    time_total: float = 0.0
    stop_reason: str = ""

    @property
    def time_decode(self) -> float:
        """Time after the prefill (the prefill includes choosing the first token)."""
        return self.time_total - self.time_prefill

    @property
    def tokens_per_step(self) -> float:
        return sum(self.accepted_per_step) / self.steps if self.steps else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens made by decoding steps (not the prefill's first token) per second of decoding."""
        made = sum(self.accepted_per_step)
        return made / self.time_decode if self.time_decode > 0 else 0.0

    @property
    def end_to_end_tokens_per_s(self) -> float:
        return self.new_tokens / self.time_total if self.time_total > 0 else 0.0

    def to_dict(self) -> dict:
        """Every field and derived rate, JSON-ready."""
        return asdict(self) | {
            "time_decode": self.time_decode,
            "tokens_per_step": self.tokens_per_step,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "end_to_end_tokens_per_s": self.end_to_end_tokens_per_s,
        }


@dataclass
class GenerationResult:
    """What :func:`generate` returns: the text (special tokens skipped), new token ids, stats."""

    text: str
    token_ids: list[int]
    stats: GenerationStats


def generate(
    model,
    tokenizer,
    prompt: str | None = None,
    *,
    messages: list[dict] | None = None,
    input_ids: Sequence[int] | None = None,
    drafter: Drafter | None = None,
    options: GenerationOptions | None = None,
    **option_values: Any,
) -> GenerationResult:
    """Generate a continuation of ``prompt`` / ``messages`` (chat template) / ``input_ids``.

    ``model`` is a transformers model or a :class:`~restdecode.backends.Backend` (e.g. a GGUF on
    llama.cpp). Exactly one input is given. ``drafter`` (a ``restdecode.drafting`` Drafter) proposes draft
    trees; ``None`` decodes plainly. ``options`` (:class:`GenerationOptions`), or its fields as
    keywords (``max_new_tokens=64, temperature=0.7, ...``, applied on top of ``options``), say
    how: greedy at temperature 0, otherwise sampled losslessly. Generation ends at an
    end-of-sequence token (kept in ``token_ids``), after ``max_new_tokens``, or at the token
    completing one of the ``stop_strings`` (kept in the text, as ``transformers`` does).
    """
    return stream(model, tokenizer, prompt, messages=messages, input_ids=input_ids,
                  drafter=drafter, options=options, **option_values).drain()


def stream(
    model,
    tokenizer,
    prompt: str | None = None,
    *,
    messages: list[dict] | None = None,
    input_ids: Sequence[int] | None = None,
    drafter: Drafter | None = None,
    options: GenerationOptions | None = None,
    **option_values: Any,
) -> "TextStream":
    """Like :func:`generate`, as an iterator of text pieces: one per decoding step, holding the
    text of every token that step accepted.

    The pieces join to ``generate(...).text``; a character split over several tokens is held back
    until complete. Once exhausted, ``.result`` is the :class:`GenerationResult` (it is also the
    iterator's return value, ``StopIteration.value``). The options and the prompt are checked
    here, before the first piece is asked for.
    """
    options = resolve_options(options, **option_values)
    if messages is not None:
        check_messages(messages)
    prompt_ids = prompt_token_ids(tokenizer, prompt, messages, input_ids)
    backend = as_backend(model)
    _check_request(backend, prompt_ids)
    return TextStream(_decode(backend, tokenizer, prompt_ids, drafter, options))


class TextStream(Iterator[str]):
    """The text pieces of one generation; ``result`` is set once they are exhausted."""

    def __init__(self, events: Generator[str, None, GenerationResult]) -> None:
        self._events = events
        self.result: GenerationResult | None = None

    def __next__(self) -> str:
        try:
            return next(self._events)
        except StopIteration as done:
            self.result = done.value
            raise

    def drain(self) -> GenerationResult:
        """Run to the end, dropping the pieces; the result."""
        for _ in self:
            pass
        return self.result

    def close(self) -> None:
        """Stop generating (as a generator's ``close``)."""
        self._events.close()


def _decode(backend: Backend, tokenizer, prompt_ids: list[int], drafter: Drafter | None,
            options: GenerationOptions) -> Generator[str, None, GenerationResult]:
    started = time.perf_counter()
    output = _Output(tokenizer, backend.eos_token_ids(tokenizer), options.max_new_tokens,
                     options.stop_strings, prompt_ids=prompt_ids)
    decoder = _Decoder(backend, drafter, _TokenChooser(options), prompt_ids)
    stats = decoder.stats
    waited = 0.0  # time spent in the caller between pieces, not ours to count

    def emit(pieces: Iterator[str]) -> Iterator[str]:
        """One piece per step: the text of every token the step accepted (none if empty)."""
        nonlocal waited
        text = "".join(pieces)
        if not text:
            return
        paused = time.perf_counter()
        yield text  # outside inference mode: the caller's code runs here
        waited += time.perf_counter() - paused

    if not output.done:
        first = decoder.start()
        stats.time_prefill = time.perf_counter() - started
        yield from emit(output.add(first))
    while not output.done:
        tokens = decoder.step(max_depth=output.remaining - 1)
        if tokens is None:
            output.stop_reason = "context_full"
            break
        yield from emit(output.add(tokens))
    yield from emit(output.flush())
    stats.time_total = time.perf_counter() - started - waited
    stats.time_other = max(
        0.0, stats.time_decode - stats.time_draft - stats.time_verify - stats.time_accept_commit
    )
    stats.new_tokens = len(output.ids)
    stats.stop_reason = output.stop_reason
    return GenerationResult(text=output.final_text(), token_ids=output.ids, stats=stats)


class _Decoder:
    """The model side of one generation: a backend session (the KV cache), the pending token,
    and the four stages of a step."""

    def __init__(self, backend: Backend, drafter, chooser: "_TokenChooser",
                 prompt_ids: list[int]) -> None:
        self.backend = backend
        self.drafter = drafter if drafter is not None else NoDrafter()
        self.chooser = chooser
        self.context = list(prompt_ids)  # prompt + generated tokens, the pending one included
        self.stats = GenerationStats(prompt_tokens=len(prompt_ids))
        self.session: Session | None = None
        # Asked once, not every step: composite drafters answer by asking each part.
        self.reads_hidden = reads_hidden_states(self.drafter)

    @property
    def pending(self) -> int:
        return self.context[-1]

    @torch.inference_mode()
    def start(self) -> list[int]:
        """Prefill the prompt; the first token, chosen from the prefill's logits."""
        self.session = self._open_session()
        first = self.chooser.first(self.session.prefill(self.context))
        self.context.append(first)
        self.drafter.reset()
        self.drafter.observe(StepFeedback([first], hidden=self._hidden_state(0)))
        return [first]

    def _open_session(self) -> Session:
        """A session of the backend; one that keeps hidden states for a drafter reading them."""
        if not self.reads_hidden:
            return self.backend.session()
        if not getattr(self.backend, "gives_hidden_states", False):
            raise DecodingError(f"this drafter reads the model's hidden states (draft heads), "
                                f"which the {self.backend.name} backend does not give; use the "
                                f"transformers backend")
        return self.backend.session(hidden=True)

    def _hidden_state(self, slot: int):
        """The final hidden state at ``slot`` of the last forward, for a drafter reading it."""
        return self.session.hidden_state(slot) if self.reads_hidden else None

    @torch.inference_mode()
    def step(self, max_depth: int) -> list[int] | None:
        """One step: draft -> verify -> accept -> commit; the new tokens (the last is pending).

        ``max_depth`` bounds the draft depth worth verifying; None when the context is full.
        """
        depth = min(max_depth, self._context_room())
        if depth < 0:
            return None
        stats, mark = self.stats, time.perf_counter()
        draft = _limit_depth(self.drafter.propose(self.context), depth)
        tree = draft.compile(self.backend.device)
        stats.time_draft += (now := time.perf_counter()) - mark
        logits = self.session.verify(self.pending, tree)
        stats.time_verify += (mark := time.perf_counter()) - now
        slots, tokens = self.chooser.accept(logits, tree)
        self._commit(slots, tokens, draft)
        stats.time_accept_commit += time.perf_counter() - mark
        stats.steps += 1
        stats.tree_size_per_step.append(tree.num_slots - 1)
        stats.accepted_per_step.append(len(tokens))
        return tokens

    def _context_room(self) -> int:
        """Deepest draft whose slots still have positions inside the model's context (-1: none)."""
        limit = self.backend.context_limit
        past = self.session.past_length
        return limit - 1 - past if limit is not None else len(self.context)

    def _commit(self, slots: list[int], tokens: list[int], draft: DraftTree) -> None:
        self.session.commit(slots)
        self.context += tokens
        # The last accepted slot's logits chose the step's last token (the new pending one).
        self.drafter.observe(StepFeedback(tokens, draft, [slot - 1 for slot in slots[1:]],
                                          hidden=self._hidden_state(slots[-1])))


def prompt_token_ids(tokenizer, prompt: str | None = None, messages: list[dict] | None = None,
                     input_ids: Sequence[int] | None = None) -> list[int]:
    """Token ids of exactly one of: raw ``prompt`` text, chat ``messages`` (the tokenizer's chat
    template with the generation prompt), or ready ``input_ids``."""
    given = [x is not None for x in (prompt, messages, input_ids)]
    if sum(given) != 1:
        raise DecodingError("give exactly one of prompt, messages and input_ids")
    if input_ids is not None:
        ids = [int(t) for t in input_ids]
    elif messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise DecodingError("the tokenizer has no chat template; pass a plain prompt instead")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise DecodingError("the prompt is empty: at least one token is needed")
    return list(ids)


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a generation of ``model`` (a transformers model: its generation
    config's, else the tokenizer's; a backend: its own)."""
    return as_backend(model).eos_token_ids(tokenizer)


def _check_request(backend: Backend, prompt_ids: list[int]) -> None:
    limit = backend.context_limit
    if limit is not None and len(prompt_ids) >= limit:
        raise DecodingError(
            f"the prompt has {len(prompt_ids)} tokens; the model's context holds {limit}, "
            f"leaving no room to generate"
        )


def _limit_depth(tree: DraftTree, max_depth: int) -> DraftTree:
    """The sub-tree of nodes at depth <= ``max_depth`` (still topologically ordered); a cut by
    depth alone, so the draws below the kept nodes stay."""
    return tree.subset(tree.depths <= max_depth, blind_to_draws=True)


class _TokenChooser:
    """Greedy or sampled choice of the first token and acceptance over verified trees."""

    def __init__(self, options: GenerationOptions) -> None:
        self.sampler = (None if options.greedy
                        else Sampler(options.temperature, options.top_k, options.top_p))
        self.generator = torch.Generator()
        if options.seed is not None:
            self.generator.manual_seed(options.seed)
        else:
            self.generator.seed()

    def first(self, logits: torch.Tensor) -> int:
        if self.sampler is None:
            return int(logits.argmax())
        return self.sampler.sample(logits, self.generator)

    def accept(self, logits: torch.Tensor, tree) -> tuple[list[int], list[int]]:
        if self.sampler is None:
            return accept_greedy(logits, tree)
        return accept_sampling(logits, tree, self.sampler, self.generator)


class _Output:
    """The generated tokens and text so far, with the end conditions checked token by token."""

    def __init__(self, tokenizer, eos: set[int], max_new_tokens: int,
                 stop_strings: Sequence[str] | None, prompt_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.eos = eos
        self.max_new_tokens = max_new_tokens
        self.stop = [s for s in (stop_strings or []) if s]
        # As transformers' StopStringCriteria, a stop string may begin in the prompt's last
        # characters (but must end in generated text).
        longest = max((len(s) for s in self.stop), default=1)
        tail = tokenizer.decode(list(prompt_ids[-longest:])) if self.stop and len(prompt_ids) else ""
        self._prompt_tail = tail[-(longest - 1):] if longest > 1 else ""
        self.ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0
        self.stop_reason = "" if max_new_tokens > 0 else "length"

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.ids)

    def add(self, tokens: Sequence[int]) -> Iterator[str]:
        """Append accepted tokens up to the first end condition; yield the text they complete."""
        for token in tokens:
            self.ids.append(int(token))
            piece = self._detokenize()
            if piece:
                yield piece
            self.stop_reason = self._end_condition(int(token), piece)
            if self.stop_reason:
                return

    def _end_condition(self, token: int, piece: str) -> str:
        if token in self.eos:
            return "eos"
        if piece and any(s in self._recent(len(piece) + len(s) - 1) for s in self.stop):
            return "stop_string"
        if len(self.ids) >= self.max_new_tokens:
            return "length"
        return ""

    def _recent(self, chars: int) -> str:
        """The last ``chars`` characters of prompt tail + generated text: any stop string found
        there ends in the newest piece."""
        return (self._prompt_tail + self.text)[-chars:]

    def _detokenize(self) -> str:
        # Incremental detokenisation (as in vLLM): decode from a fixed earlier offset so that
        # tokenizers which drop leading spaces at a sequence start still produce the right diff.
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        full = decode(self.ids[self._prefix_offset:], skip_special_tokens=True)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # nothing new, or a character still incomplete
        piece = full[len(prefix):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        self.text += piece
        return piece

    def flush(self) -> Iterator[str]:
        """Whatever text was still held back once generation ended."""
        final = self.final_text()
        if final.startswith(self.text) and len(final) > len(self.text):
            rest = final[len(self.text):]
            self.text = final
            yield rest

    def final_text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)
