"""The decoding methods the benchmark compares, behind one small interface.

Every method turns a prompt's token ids into new token ids and reports how many tokens each
model forward committed (``accepted_per_step``, the prefill forward first). The runner does all
the timing around :meth:`Method.generate`, so every method is timed the same way.

* ``hf-greedy``: ``model.generate(do_sample=False)``, the baseline on the transformers backend;
* ``hf-prompt-lookup``: ``model.generate(do_sample=False, prompt_lookup_num_tokens=10)``;
* ``llamacpp-greedy``: llama-cpp-python's own loop (``Llama.generate``, greedy) on the model's
  GGUF file, the baseline on the llamacpp backend;
* ``llamacpp-prompt-lookup``: the same with ``LlamaPromptLookupDecoding(num_pred_tokens=10)``;
* ``rest``: our engine with REST's published drafter (:func:`rest_drafter`);
* ``restdecode``: our engine with its default drafter (``Engine.new_drafter``), its context
  source starting empty for every prompt;
* ``plain``: our engine with no drafting (``NoDrafter``): the cost of our loop alone;
* ``restdecode-memory`` (not run by default): ``restdecode`` whose context source also searches
  this method's own earlier outputs of the run (:class:`restdecode.drafting.MemoryDrafter`),
  carried across prompts in the benchmark's order.

With a draft model (``Engine.load(draft_model=...)``, ``bench --draft-model``), and only then:

* ``hf-assisted``: ``model.generate(do_sample=False, assistant_model=draft)``, transformers'
  assisted generation with the draft as a transformers model (the peer of ``draft-model``);
* ``draft-model``: our engine with the draft model's drafts alone
  (:class:`~restdecode.drafting.DraftModelDrafter`, ``--draft-k`` / ``--draft-branches``);
* ``draft-model+retrieval``: our engine with the draft model merged with retrieval and context
  (``Engine.new_drafter``: what ``generate --draft-model`` uses). ``restdecode`` stays
  retrieval + context alone.

With trained draft heads as the draft model (``--draft-model DIR`` of ``train-drafter --kind
heads``), ``draft-model`` is the heads alone, planned, and ``draft-model+retrieval`` the heads
merged with retrieval and context; ``hf-assisted`` has no draft model to run.

Our engine's methods run on the engine's backend (transformers or llama.cpp); the ``hf-*`` and
``llamacpp-*`` methods always run their own library's loop.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from restdecode.errors import RestdecodeError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from restdecode.datastore import Datastore
    from restdecode.drafting.base import Drafter
    from restdecode.drafting.memory import MemoryDrafter
    from restdecode.engine import Engine

HF_GREEDY = "hf-greedy"
LLAMACPP_GREEDY = "llamacpp-greedy"
PLAIN = "plain"
DEFAULT_METHODS: tuple[str, ...] = (HF_GREEDY, "hf-prompt-lookup", "rest", "restdecode", PLAIN)
# On llama.cpp: its own loops, transformers' greedy for reference (what restdecode's transformers
# backend is measured against), our engine; not REST's 64-node trees, whose every verification
# costs about 21 plain llama.cpp steps on a CPU (bench/RESULTS.md, issue 13).
LLAMACPP_DEFAULT_METHODS: tuple[str, ...] = (LLAMACPP_GREEDY, HF_GREEDY, "llamacpp-prompt-lookup",
                                             "restdecode", PLAIN)
HF_ASSISTED = "hf-assisted"
# The methods that need a draft model; they join the defaults when one is given.
DRAFT_METHODS: tuple[str, ...] = (HF_ASSISTED, "draft-model", "draft-model+retrieval")
METHOD_NAMES: tuple[str, ...] = DEFAULT_METHODS + (
    "restdecode-memory", LLAMACPP_GREEDY, "llamacpp-prompt-lookup") + DRAFT_METHODS
NEEDS_DATASTORE: frozenset[str] = frozenset({"rest"})
# transformers' own loop
HF_METHODS: frozenset[str] = frozenset({HF_GREEDY, "hf-prompt-lookup", HF_ASSISTED})
LLAMACPP_METHODS: frozenset[str] = frozenset({LLAMACPP_GREEDY, "llamacpp-prompt-lookup"})
ENGINE_METHODS: frozenset[str] = frozenset({"rest", "restdecode", PLAIN, "restdecode-memory",
                                            "draft-model", "draft-model+retrieval"})

# REST's published configuration (He et al. 2024, FasterDecoding/REST): the datastore search's
# defaults (restdecode.datastore.search) and trees of 64 nodes.
REST_BUDGET = 64
PROMPT_LOOKUP_TOKENS = 10


@dataclass
class MethodRun:
    """What one generation produced: the new tokens, and tokens committed per model forward."""

    token_ids: list[int]
    accepted_per_step: list[int]


class Method(Protocol):
    """A decoding method under test."""

    name: str

    def generate(self, input_ids: "torch.Tensor", max_new_tokens: int) -> MethodRun:
        """Greedy-decode up to ``max_new_tokens`` after ``input_ids`` (shape (1, n))."""
        ...

    def forget(self) -> None:
        """Drop whatever earlier generations taught the method about outputs (after warm-up)."""
        ...

    def recall(self, outputs: list[list[int]]) -> None:
        """Learn ``outputs`` as if generated earlier in this run (a resumed run)."""
        ...


def default_methods(backend: str, *, draft_model: bool = False,
                    heads: bool = False) -> list[str]:
    """The methods run when none are named: on the llamacpp backend llama.cpp's own loops take
    the place of transformers' ones; with a draft model, the ``DRAFT_METHODS`` too (with draft
    heads, all but ``hf-assisted``)."""
    methods = list(LLAMACPP_DEFAULT_METHODS if backend == "llamacpp" else DEFAULT_METHODS)
    if not draft_model:
        return methods
    return methods + [name for name in DRAFT_METHODS if not (heads and name == HF_ASSISTED)]


def baseline_for(methods: list[str], backend: str) -> str | None:
    """The method identity and speedups are measured against: ``llamacpp-greedy`` on the
    llamacpp backend when it runs, else ``hf-greedy``; None when that one does not run."""
    if backend == "llamacpp" and LLAMACPP_GREEDY in methods:
        return LLAMACPP_GREEDY
    return HF_GREEDY if HF_GREEDY in methods else None


def rest_drafter(datastore: "Datastore") -> "Drafter":
    """REST's drafter as published: retrieval only, 64 nodes, spans 16..2, 5,000 matches, span 10."""
    from restdecode.drafting import RetrievalDrafter

    return RetrievalDrafter(datastore, budget=REST_BUDGET)


class HFGenerate:
    """``model.generate`` with greedy decoding (and optional extra arguments, e.g. prompt lookup).

    Tokens per forward are read by a forward pre-hook: the KV cache length before each forward
    is the committed length minus the pending token, so successive differences are the tokens
    each forward committed (transformers crops rejected candidates out of the cache).
    """

    def __init__(self, name: str, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                 **generate_kwargs) -> None:
        self.name = name
        self.model = model
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        self.generate_kwargs = generate_kwargs

    def forget(self) -> None:
        """Stateless across generations."""

    def recall(self, outputs: list[list[int]]) -> None:
        """Stateless across generations."""

    def generate(self, input_ids: "torch.Tensor", max_new_tokens: int) -> MethodRun:
        import torch

        cache_lengths: list[int] = []

        def record_cache_length(_module, _args, kwargs):
            # transformers >= 5.24 passes the cache as ``cache``, earlier ones as ``past_key_values``
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            cache_lengths.append(int(cache.get_seq_length()) if cache is not None else 0)

        handle = self.model.register_forward_pre_hook(record_cache_length, with_kwargs=True)
        try:
            with torch.inference_mode():
                output = self.model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                    max_new_tokens=max_new_tokens, pad_token_id=self.pad_token_id,
                    **self.generate_kwargs,
                )
        finally:
            handle.remove()
        new_tokens = output[0, input_ids.shape[1]:].tolist()
        return MethodRun(new_tokens, _committed_per_forward(cache_lengths, input_ids.shape[1],
                                                            len(new_tokens)))


def _committed_per_forward(cache_lengths: list[int], prompt_length: int, new_tokens: int) -> list[int]:
    """Tokens committed by each forward, from the cache length seen before each forward."""
    if not cache_lengths:
        return []
    # After forward k the cache holds every committed token but the newest one.
    after = cache_lengths[1:] + [prompt_length + new_tokens - 1]
    committed = [after[0] + 1 - prompt_length]
    committed += [b - a for a, b in zip(after, after[1:])]
    return committed


class LlamaCppGenerate:
    """llama-cpp-python's own greedy loop (``Llama.generate``) on a GGUF file; with
    ``prompt_lookup``, its speculative loop with ``LlamaPromptLookupDecoding`` drafts.

    Every generation starts from an empty context (``Llama.reset``): llama-cpp-python otherwise
    reuses the KV cache of the previous prompt's common prefix, and the full generation would
    skip the prefill the runner's 1-token generation just did. Tokens per forward come from the
    committed length (``n_tokens``) before each ``Llama.eval``, as :class:`HFGenerate` reads the
    KV-cache length (llama-cpp-python also truncates rejected drafts out of it).
    """

    def __init__(self, name: str, gguf: "Path", *, n_ctx: int, n_threads: int,
                 prompt_lookup: bool = False) -> None:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(num_pred_tokens=PROMPT_LOOKUP_TOKENS) \
            if prompt_lookup else None
        self.name = name
        # logits_all with a draft model: llama-cpp-python 0.3.36 keeps every position's logits
        # then, but sizes that buffer by the *argument* (n_batch rows without it), so a context
        # past 512 tokens overflows it (ValueError in Llama.eval).
        self.llm = _recording_llama()(str(gguf), n_ctx=n_ctx, n_threads=n_threads,
                                      n_threads_batch=n_threads, draft_model=draft,
                                      logits_all=prompt_lookup, verbose=False)
        self.llm.eval_lengths = []
        self._is_end = functools.partial(llama_cpp.llama_vocab_is_eog, self.llm._model.vocab)

    def forget(self) -> None:
        """Stateless across generations (the context is reset before each)."""

    def recall(self, outputs: list[list[int]]) -> None:
        """Stateless across generations."""

    def generate(self, input_ids: "torch.Tensor", max_new_tokens: int) -> MethodRun:
        prompt = input_ids[0].tolist()
        self.llm.reset()
        self.llm.eval_lengths = lengths = []
        tokens: list[int] = []
        generation = self.llm.generate(prompt, temp=0.0, top_k=1)
        for token in generation:
            tokens.append(int(token))  # an end token is kept, as generate() and our engine do
            if self._is_end(token) or len(tokens) >= max_new_tokens:
                break
        generation.close()
        return MethodRun(tokens, _committed_per_forward(lengths, len(prompt), len(tokens)))


@functools.cache
def _recording_llama() -> type:
    """``llama_cpp.Llama`` noting its committed length (``n_tokens``) before every ``eval``."""
    import llama_cpp

    class RecordingLlama(llama_cpp.Llama):
        eval_lengths: list[int]

        def eval(self, tokens) -> None:
            self.eval_lengths.append(self.n_tokens)
            super().eval(tokens)

    return RecordingLlama


def llamacpp_settings(engine: "Engine") -> dict:
    """Context size and threads of the ``llamacpp-*`` methods: those of the engine's llama.cpp
    backend (else the backend's defaults: 4096 positions, every core), so that they and our
    engine's methods run the same llama.cpp configuration."""
    backend = engine.backend
    if backend.name == "llamacpp":
        return {"n_ctx": backend.n_ctx, "n_threads": backend.n_threads}
    from restdecode.backends.llamacpp import DEFAULT_CONTEXT

    return {"n_ctx": DEFAULT_CONTEXT, "n_threads": os.cpu_count() or 1}


class EngineMethod:
    """Our decoding loop (:meth:`restdecode.engine.Engine.generate`) with a given drafter."""

    def __init__(self, name: str, engine: "Engine", drafter: "Drafter",
                 memory: "MemoryDrafter | None" = None, memory_file: "Path | None" = None) -> None:
        self.name = name
        self.engine = engine
        self.drafter = drafter
        self.memory = memory
        self.memory_file = memory_file if memory is not None else None
        self.forget()

    def forget(self) -> None:
        """Back to the output memory the run started with: empty, or ``memory_file``'s."""
        if self.memory is not None:
            self.memory.forget()
            if self.memory_file is not None:
                self.engine.read_memory(self.memory, self.memory_file)

    def save_memory(self) -> None:
        """Write the output memory to ``memory_file`` (nothing without one)."""
        if self.memory_file is not None:
            self.engine.write_memory(self.memory, self.memory_file)

    def recall(self, outputs: list[list[int]]) -> None:
        """Put ``outputs`` into the output memory, if the drafter has one."""
        if self.memory is not None:
            for output in outputs:
                self.memory.remember(output)

    def generate(self, input_ids: "torch.Tensor", max_new_tokens: int) -> MethodRun:
        result = self.engine.generate(input_ids=input_ids[0].tolist(), drafter=self.drafter,
                                      max_new_tokens=max_new_tokens)
        return MethodRun(list(result.token_ids), engine_accepted_per_step(result.stats))


def engine_accepted_per_step(stats) -> list[int]:
    """Tokens committed per model forward from our engine's stats (prefill forward first).

    The engine's ``accepted_per_step`` leaves out the prefill, which commits the first token.
    """
    prefill = [1] if stats.new_tokens else []
    return prefill + [int(n) for n in stats.accepted_per_step]


def check_method_names(names: list[str], *, has_datastore: bool, model: str | None = None,
                       has_draft_model: bool = False) -> None:
    """Raise a user-facing error for unknown names, for ``rest`` without a datastore, for the
    ``DRAFT_METHODS`` without a draft model, and for ``llamacpp-*`` methods without
    llama-cpp-python or (``model`` given) without a GGUF model."""
    unknown = [name for name in names if name not in METHOD_NAMES]
    if unknown:
        raise RestdecodeError(f"unknown method(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(METHOD_NAMES)}")
    if not has_datastore and NEEDS_DATASTORE.intersection(names):
        raise RestdecodeError("method 'rest' needs a datastore: pass --datastore FILE "
                              "(build one with `restdecode build-datastore`)")
    needs_draft = [name for name in names if name in DRAFT_METHODS]
    if needs_draft and not has_draft_model:
        raise RestdecodeError(f"{', '.join(needs_draft)} need a draft model: pass --draft-model "
                              "NAME|PATH (a smaller model with the same tokenizer, e.g. "
                              "qwen2.5-coder-0.5b-instruct for qwen2.5-coder-1.5b-instruct)")
    _check_llamacpp_methods(names, model)


def _check_llamacpp_methods(names: list[str], model: str | None) -> None:
    wanted = ", ".join(name for name in names if name in LLAMACPP_METHODS)
    if not wanted:
        return
    from restdecode.backends import llamacpp_available
    from restdecode.backends.llamacpp import INSTALL_HINT
    from restdecode.models import is_gguf_model

    if not llamacpp_available():
        raise RestdecodeError(f"{wanted} run llama-cpp-python, which is not installed: {INSTALL_HINT}")
    if model is not None and not is_gguf_model(model):
        raise RestdecodeError(f"{wanted} run llama.cpp on the model's GGUF file, and {model!r} "
                              "is not a GGUF model (a model asset, ASSET:TYPE or a .gguf file)")


def build_methods(names: list[str], engine: "Engine", *,
                  memory_file: "Path | None" = None) -> list[Method]:
    """The methods called ``names``, in that order, sharing ``engine``'s model and datastore.

    ``restdecode-memory`` starts from the outputs saved in ``memory_file`` (when given and
    present), and :meth:`EngineMethod.save_memory` writes its memory back there.

    ``restdecode`` methods plan their trees with the engine's latency profile (measured now if
    this machine has none cached). When the engine's model is compiled
    (``Engine.load(compile=True)``), our engine's methods run through it while the ``hf-*``
    methods take the eager model behind it; on another backend the ``hf-*`` methods load the
    transformers model of ``engine.name``, only if one of them is asked for. The ``llamacpp-*``
    methods load the GGUF file of ``engine.name`` (a second copy of the model).
    """
    check_method_names(names, has_datastore=engine.datastore is not None,
                       has_draft_model=(engine.draft_model is not None
                                        or engine.draft_heads is not None))
    hf_model = functools.cache(lambda: _transformers_model(engine))
    return [_build_method(name, engine, memory_file, hf_model) for name in names]


def _heads_alone(engine: "Engine"):
    """The engine's draft heads drafting alone, planned by its latency profile (a fixed tree of
    ``--budget`` nodes when one is given)."""
    from restdecode.drafting import CANDIDATE_BUDGET, PlannedDrafter
    from restdecode.drafting.defaults import STEP_OVERHEAD_S
    from restdecode.drafting.heads import hidden_drafter
    from restdecode.drafting.planner import default_calibration

    if engine.budget is not None:
        return hidden_drafter(engine.draft_heads, budget=engine.budget)
    return PlannedDrafter(hidden_drafter(engine.draft_heads, budget=CANDIDATE_BUDGET),
                          engine.profile, calibration=default_calibration(),
                          overhead=STEP_OVERHEAD_S)


def _transformers_model(engine: "Engine", *, draft: bool = False) -> "PreTrainedModel":
    """The eager transformers model (``draft``: the draft model): the engine's own, or loaded
    now for another backend."""
    from restdecode.compiled import eager

    backend, model, name = ((engine.draft_backend, engine.draft_model, engine.draft_name)
                            if draft else (engine.backend, engine.model, engine.name))
    if backend.name == "transformers":
        return eager(model)
    from restdecode.models import load

    return load(name)[0]


def _llamacpp_method(name: str, engine: "Engine") -> LlamaCppGenerate:
    from restdecode.models import gguf_path

    gguf = engine.backend.path if engine.backend.name == "llamacpp" else gguf_path(engine.name)
    return LlamaCppGenerate(name, gguf, **llamacpp_settings(engine),
                            prompt_lookup=name == "llamacpp-prompt-lookup")


def _build_method(name: str, engine: "Engine", memory_file: "Path | None",
                  hf_model: "Callable[[], PreTrainedModel]") -> Method:
    from restdecode.drafting import NoDrafter, default_memory
    from restdecode.drafting.planner import default_calibration

    if name == HF_GREEDY:
        return HFGenerate(name, hf_model(), engine.tokenizer)
    if name == "hf-prompt-lookup":
        return HFGenerate(name, hf_model(), engine.tokenizer,
                          prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS)
    if name == HF_ASSISTED:
        if engine.draft_heads is not None:
            raise RestdecodeError("hf-assisted needs a draft model; draft heads have none to run")
        return HFGenerate(name, hf_model(), engine.tokenizer,
                          assistant_model=_transformers_model(engine, draft=True))
    if name in LLAMACPP_METHODS:
        return _llamacpp_method(name, engine)
    if name == "rest":
        return EngineMethod(name, engine, rest_drafter(engine.datastore))
    if name == "restdecode":
        return EngineMethod(name, engine, engine.new_drafter(calibration=default_calibration(),
                                                             draft_model=False))
    if name == "draft-model":
        if engine.draft_heads is not None:
            return EngineMethod(name, engine, _heads_alone(engine))
        return EngineMethod(name, engine, engine.new_draft_model_drafter())
    if name == "draft-model+retrieval":
        return EngineMethod(name, engine, engine.new_drafter(calibration=default_calibration()))
    if name == "restdecode-memory":
        memory = default_memory()
        drafter = engine.new_drafter(memory=memory, calibration=default_calibration(),
                                     draft_model=False)
        return EngineMethod(name, engine, drafter, memory, memory_file)
    return EngineMethod(name, engine, NoDrafter())
