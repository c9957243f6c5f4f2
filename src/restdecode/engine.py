"""The engine: one object that sets up decoding the same way for every entry point.

:class:`Engine` loads the model (eager or compiled), opens the datastore with the tokenizer and
vocabulary checks, gets the model's latency profile on this machine when drafts are sized by it,
and builds the default drafter. ``generate``, ``stream``, the CLI commands and the benchmark all
go through it, so a default lives in one place only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from restdecode.errors import DatastoreError, OptionsError

if TYPE_CHECKING:
    from restdecode.datastore import Datastore
    from restdecode.decode import GenerationResult, TextStream
    from restdecode.drafting import ContinuationDrafter, Drafter, MemoryDrafter
    from restdecode.drafting.draft_model import DraftModelDrafter
    from restdecode.drafting.heads import DraftHeads
    from restdecode.drafting.planner import AcceptanceCalibration
    from restdecode.latency import BatchLatencyProfile, LatencyProfile
    from restdecode.options import GenerationOptions

DEFAULT_MODEL = "smollm2-135m-instruct"
# A draft model's default shape (--draft-k, --draft-branches): a chain of 4 tokens, one draft
# forward each (not measured yet on the Qwen2.5-Coder pair; transformers' assisted generation
# drafts up to 20, stopping where the draft's confidence falls below an adaptive threshold).
DRAFT_K = 4
DRAFT_BRANCHES = 1
# Where `make demo` builds the ShareGPT datastore of a model (relative to restdecode_home()).
DEFAULT_DATASTORES = {DEFAULT_MODEL: "datastores/sharegpt-smollm2.rds"}


def default_datastore(model: str) -> Path | None:
    """The datastore `make demo` builds for ``model``, if it exists."""
    from restdecode.assets import restdecode_home

    relative = DEFAULT_DATASTORES.get(model)
    if relative is None:
        return None
    path = restdecode_home() / relative
    return path if path.is_file() else None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Engine:
    """A loaded model, its tokenizer, an optional datastore and the default drafter.

    ``model`` is a transformers model (eager or compiled) or a
    :class:`~restdecode.backends.Backend` (e.g. a GGUF on llama.cpp); ``engine.backend`` is
    the backend either way.

    * ``draft=False``: plain decoding (no drafter);
    * ``budget``: a fixed draft tree of that many nodes every step; without it, each step's tree
      is sized by the model's latency profile on this machine (measured once, then cached);
    * ``draft_model``: a smaller model of the same tokenizer (a transformers model or a
      :class:`~restdecode.backends.Backend` of its own, e.g. a GGUF on llama.cpp) whose chain
      of ``draft_k`` tokens (a tree of ``draft_branches`` chains when > 1) joins retrieval and
      context in the default drafter (:func:`merge_draft_model`); ``draft_tokenizer`` (its
      tokenizer), when given, is checked to be the target's (:func:`check_same_tokenizer`);
    * ``memory=True``: the context source also searches this engine's earlier outputs
      (:class:`~restdecode.drafting.MemoryDrafter`, kept in ``engine.memory``);
      ``memory_file``: where that memory is loaded from now and saved by :meth:`save_memory`
      (the token ids of earlier outputs only, tagged with the tokenizer's fingerprint). A damaged
      or foreign file is moved aside to ``*.damaged`` with a warning, never fatal.
    """

    def __init__(self, model, tokenizer, *, datastore: "Datastore | None" = None,
                 profile: "LatencyProfile | None" = None, draft: bool = True,
                 budget: int | None = None, memory: bool = False,
                 memory_file: str | Path | None = None, name: str = "", progress: bool = True,
                 say: Callable[[str], None] = _say, draft_model=None, draft_tokenizer=None,
                 draft_k: int = DRAFT_K, draft_branches: int = DRAFT_BRANCHES,
                 draft_name: str = "", draft_profile: "LatencyProfile | None" = None,
                 draft_heads: "DraftHeads | None" = None) -> None:
        from restdecode.drafting import default_memory
        from restdecode.drafting.planner import default_calibration

        from restdecode.backends import as_backend

        self.model = model
        self.backend = as_backend(model)
        self.tokenizer = tokenizer
        self.datastore = datastore
        self.name = name
        self.progress = progress
        self._profile = profile
        self._batch_profile: "BatchLatencyProfile | None" = None
        self._draft_profile = draft_profile
        if datastore is not None:
            check_vocabulary(datastore, model)
        if budget is not None and budget < 0:
            raise OptionsError(f"budget must be >= 0 nodes, got {budget}")
        check_draft_shape(draft_k, draft_branches)
        if draft_model is not None and draft_tokenizer is not None:
            from restdecode.drafting.draft_model import check_same_tokenizer

            check_same_tokenizer(tokenizer, draft_tokenizer)
        self.draft_model = draft_model
        self.draft_heads = draft_heads  # trained draft heads over the target's hidden state
        self.draft_backend = as_backend(draft_model) if draft_model is not None else None
        self.draft_name = draft_name
        self.draft_k, self.draft_branches = draft_k, draft_branches
        self.say = say
        self.memory = default_memory() if memory and draft else None
        self.memory_file = Path(memory_file).expanduser() if memory_file is not None else None
        # What the planner learns about this model's acceptance, shared by all its drafters: a
        # server's per-request drafter starts from what earlier requests taught.
        self.calibration = default_calibration()
        self.remembered_at_start = self._load_memory()
        self.budget = budget
        self.drafter = self.new_drafter() if draft else None

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, *, datastore: str | Path | None = None,
             backend: str = "transformers", compile: bool = False, draft: bool = True,
             budget: int | None = None, memory: bool = False,
             memory_file: str | Path | None = None, progress: bool = True,
             say: Callable[[str], None] = _say, draft_model: str | None = None,
             draft_backend: str = "auto", draft_k: int = DRAFT_K,
             draft_branches: int = DRAFT_BRANCHES, context: int | None = None) -> "Engine":
        """Load ``model`` (asset name, GGUF file or Hugging Face directory) on ``backend``
        (``transformers``; ``llamacpp`` for a GGUF; ``auto``: llama.cpp for a GGUF when it is
        installed, else transformers), and ``datastore`` (a file from ``restdecode
        build-datastore``), then build the default drafter.

        The datastore is checked to exist before the model is loaded. With ``compile`` (the
        transformers backend only), the model's verification forward runs through
        ``torch.compile``; its graphs are built here (minutes on a CPU, said through ``say``).

        ``draft_model`` (same forms as ``model``) is loaded on ``draft_backend`` (resolved as
        ``backend`` is; on llama.cpp a backend of its own) after both tokenizers were compared
        (:func:`~restdecode.drafting.draft_model.check_same_tokenizer`: a mismatched pair is
        refused before either model loads); ``draft_k`` / ``draft_branches`` shape its drafts.
        A directory written by ``restdecode train-drafter`` is a trained drafter instead (the
        transformers backend only; one trained on another model is refused): an early exit (the
        target's own first layers and the trained head, as a draft model) or draft heads (merged
        into the default drafter, reading the target's hidden state).

        ``context``: the llama.cpp context's cells (default: the backend's own), which the rows
        of batched decoding share; the transformers backend has no such setting.
        """
        from restdecode.backends import resolve_backend
        from restdecode.drafting.early_exit import is_trained_drafter

        backend = resolve_backend(backend, model, compile=compile)
        if compile and backend != "transformers":
            raise OptionsError("--compile applies to the transformers backend only")
        if context is not None and (backend != "llamacpp" or isinstance(context, bool)
                                    or not isinstance(context, int) or context < 1):
            raise OptionsError(f"a context size (--context) applies to the llama.cpp backend "
                               f"only and must be an integer >= 1, got {context!r} on {backend}")
        check_draft_shape(draft_k, draft_branches)
        path = Path(datastore).expanduser() if datastore is not None else None
        if path is not None and not path.is_file():
            raise DatastoreError(f"datastore {path} does not exist (build one with "
                                 "`restdecode build-datastore`)")
        trained = draft_model is not None and is_trained_drafter(draft_model)
        kind = check_trained_drafter(draft_model, backend) if trained else None
        if draft_model is not None and not trained:
            check_draft_pair(model, draft_model)
            draft_backend = resolve_backend(draft_backend, draft_model)
        loaded, tokenizer = _load_on(backend, model, context)
        store = open_datastore(path, tokenizer) if path is not None else None
        if store is not None:
            check_vocabulary(store, loaded)  # before minutes of compiling
        # The pair's tokenizers were compared above (check_draft_pair), so not again below.
        draft_heads = None
        if kind in ("heads", "chain"):  # a few matrices over the target's last hidden state
            from restdecode.drafting.heads import load_hidden_drafter

            draft_loaded, draft_heads = None, load_hidden_drafter(loaded, draft_model)
        elif kind is not None:  # the target's own first layers, sharing its weights
            from restdecode.drafting.early_exit import load_exit_head

            draft_loaded = load_exit_head(loaded, draft_model)[0]
        else:
            draft_loaded = (_load_on(draft_backend, draft_model)[0] if draft_model is not None
                            else None)
        if compile:
            loaded = compile_model(loaded, say, hidden=draft_heads is not None)
        return cls(loaded, tokenizer, datastore=store, draft=draft, budget=budget, memory=memory,
                   memory_file=memory_file, name=model, progress=progress, say=say,
                   draft_model=draft_loaded, draft_k=draft_k,
                   draft_branches=draft_branches, draft_name=draft_model or "",
                   draft_heads=draft_heads)

    @property
    def profile(self) -> "LatencyProfile":
        """The model's latency profile on this machine (measured on first use, then cached)."""
        if self._profile is None:
            from restdecode.latency import profile_for

            self._profile = profile_for(self.model, progress=self.progress)
        return self._profile

    @property
    def draft_profile(self) -> "LatencyProfile | None":
        """The draft model's latency profile on this machine (None without a draft model),
        which prices its forwards when a step decides how deep to draft (measured on first
        use, then cached, as the target's is)."""
        if self.draft_backend is None:
            return None
        if self._draft_profile is None:
            from restdecode.latency import profile_for

            self._draft_profile = profile_for(self.draft_backend, progress=self.progress)
        return self._draft_profile

    @property
    def plans_drafts(self) -> bool:
        """Whether this engine's drafts are sized by the latency profile (not a fixed budget)."""
        return self.drafter is not None and self.budget is None

    @property
    def batch_profile(self) -> "BatchLatencyProfile":
        """The model's latency profile for batched forwards (by rows, draft nodes and cache) on
        this machine, which the batch planner prices its steps by (measured on first use, then
        cached)."""
        if self._batch_profile is None:
            from restdecode.latency import batch_profile_for

            self._batch_profile = batch_profile_for(self.model, progress=self.progress)
        return self._batch_profile

    def new_drafter(self, *, budget: int | None = None,
                    memory: "MemoryDrafter | None" = None,
                    learned: "ContinuationDrafter | None" = None,
                    calibration: "AcceptanceCalibration | None" = None,
                    draft_model: bool = True) -> "Drafter":
        """A fresh default drafter (:func:`restdecode.drafting.default_drafter`) over this
        engine's datastore: sized by the latency profile, or fixed at ``budget`` nodes
        (default: the engine's ``budget``);
        ``memory`` (default: the engine's, if any) as its context source; ``learned`` an extra
        source (e.g. the server's learned memory of a tenant). The planner learns into
        ``calibration``, by default ``engine.calibration``, which all this engine's drafters share
        (pass a fresh one to keep a drafter's learning apart, as the benchmark's methods do).
        With a draft model (and ``draft_model`` True) the drafter merges its drafts with
        retrieval and context (:func:`~restdecode.drafting.draft_model.merge_draft_model`), a
        draft-model session of its own; trained heads or a chain join them as one more source
        (a chain drafting its first ``MERGED_CHAIN_DEPTHS`` depth only)."""
        from restdecode.drafting import CANDIDATE_BUDGET, default_drafter
        from restdecode.drafting.defaults import MERGED_CHAIN_DEPTHS
        from restdecode.drafting.draft_model import merge_draft_model
        from restdecode.drafting.heads import hidden_drafter

        memory = memory if memory is not None else self.memory
        budget = budget if budget is not None else self.budget
        calibration = calibration if calibration is not None else self.calibration
        profile = self.profile if budget is None else None
        heads = (hidden_drafter(self.draft_heads, chain_depths=MERGED_CHAIN_DEPTHS)
                 if draft_model and self.draft_heads is not None else None)
        if heads is not None:
            if budget is not None:
                return default_drafter(self.datastore, budget=budget, memory=memory,
                                       learned=learned, heads=heads)
            return default_drafter(self.datastore, profile=profile, memory=memory,
                                   learned=learned, calibration=calibration, heads=heads)
        if draft_model and self.draft_model is not None:
            sources = default_drafter(self.datastore, memory=memory, learned=learned,
                                      budget=CANDIDATE_BUDGET if budget is None else budget)
            return merge_draft_model(
                self.new_draft_model_drafter(), sources, budget=budget, profile=profile,
                draft_profile=self.draft_profile if profile is not None else None,
                calibration=calibration)
        if budget is not None:
            return default_drafter(self.datastore, budget=budget, memory=memory, learned=learned)
        return default_drafter(self.datastore, profile=profile, memory=memory,
                               learned=learned, calibration=calibration)

    def new_draft_model_drafter(self) -> "DraftModelDrafter":
        """A fresh :class:`~restdecode.drafting.DraftModelDrafter` on this engine's draft model
        (``draft_k``, ``draft_branches``; argmax drafts: under sampling they are accepted by the
        deterministic-draft rule, still lossless). ``ModelError`` without a draft model."""
        from restdecode.drafting.draft_model import DraftModelDrafter
        from restdecode.errors import ModelError

        if self.draft_backend is None:
            raise ModelError("this engine has no draft model (Engine.load(draft_model=...), "
                             "--draft-model)")
        return DraftModelDrafter(self.draft_backend, k=self.draft_k,
                                 branches=self.draft_branches, vocab_size=self.backend.vocab_size)

    def check_batched_drafting(self) -> None:
        """OptionsError when this engine's drafters cannot run side by side (batched decoding
        gives every row a drafter of its own): a llama.cpp draft model runs one session at a
        time."""
        if self.draft_heads is not None:
            raise OptionsError("batched decoding cannot use draft heads (they read each step's "
                               "hidden state, which batched verification does not keep): serve "
                               "them with --max-batch 1")
        if self.draft_backend is not None and self.draft_backend.name == "llamacpp":
            raise OptionsError("batched decoding needs a draft model on the transformers "
                               "backend (--draft-backend transformers): a llama.cpp draft "
                               "model drafts for one sequence at a time")

    def generate(self, prompt: str | None = None, *, messages: list[dict] | None = None,
                 input_ids: Sequence[int] | None = None, drafter: "Drafter | None" = None,
                 options: "GenerationOptions | None" = None,
                 **option_values: Any) -> "GenerationResult":
        """:func:`restdecode.decode.generate` with this engine's model and drafter (or
        ``drafter``)."""
        return self.stream(prompt, messages=messages, input_ids=input_ids, drafter=drafter,
                           options=options, **option_values).drain()

    def stream(self, prompt: str | None = None, *, messages: list[dict] | None = None,
               input_ids: Sequence[int] | None = None, drafter: "Drafter | None" = None,
               options: "GenerationOptions | None" = None, **option_values: Any) -> "TextStream":
        """:func:`restdecode.decode.stream` with this engine's model and drafter (or
        ``drafter``): text pieces, then ``.result``."""
        from restdecode.decode import stream

        return stream(self.model, self.tokenizer, prompt, messages=messages, input_ids=input_ids,
                      drafter=drafter if drafter is not None else self.drafter, options=options,
                      **option_values)

    def save_memory(self) -> None:
        """Write the output memory to ``memory_file`` (atomically); nothing without one."""
        if self.memory is not None and self.memory_file is not None:
            self.write_memory(self.memory, self.memory_file)

    def write_memory(self, memory: "MemoryDrafter", path: str | Path) -> None:
        """Write ``memory`` to ``path`` (atomically), tagged with this engine's tokenizer."""
        memory.save(path, key=self._memory_key())

    def read_memory(self, memory: "MemoryDrafter", path: str | Path) -> int:
        """Load the outputs saved at ``path`` into ``memory``; how many (0: no such file). A
        damaged or foreign file is moved aside to ``*.damaged`` with a warning."""
        from restdecode.drafting.memory import MemoryFileError

        path = Path(path)
        try:
            return memory.load(path, key=self._memory_key(), vocab_size=self.backend.vocab_size)
        except MemoryFileError as error:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            self.say(f"warning: {error}; moved it to {aside}, starting with an empty memory")
            return 0

    def _load_memory(self) -> int:
        """Outputs loaded from ``memory_file`` into the memory (0 when none)."""
        if self.memory is None or self.memory_file is None:
            return 0
        return self.read_memory(self.memory, self.memory_file)

    def _memory_key(self) -> str:
        from restdecode.datastore.vocab import tokenizer_fingerprint

        return f"tokenizer {tokenizer_fingerprint(self.tokenizer)}"


def _load_on(backend: str, model: str, context: int | None = None):
    """(model or llama.cpp backend, tokenizer) of ``model`` on ``backend`` (llama.cpp: a
    context of ``context`` cells, default its own)."""
    from restdecode.models import load, load_llamacpp

    return load_llamacpp(model, n_ctx=context) if backend == "llamacpp" else load(model)


def check_draft_shape(k: int, branches: int) -> None:
    """OptionsError unless a draft model's depth and branching are both at least 1."""
    if isinstance(k, bool) or isinstance(branches, bool) or not (
            isinstance(k, int) and isinstance(branches, int) and k >= 1 and branches >= 1):
        raise OptionsError(f"draft depth (--draft-k) and branches (--draft-branches) must be "
                           f"integers >= 1, got {k!r} and {branches!r}")


def check_trained_drafter(directory: str, backend: str) -> str:
    """The kind of the trained drafter in ``directory`` (``early-exit`` or ``heads``); refuses
    a damaged directory, or a backend that cannot run part of the target's layers or give its
    hidden states, before any model loads."""
    from restdecode.drafting.early_exit import read_drafter_config

    kind = read_drafter_config(directory)["kind"]
    if backend != "transformers":
        what = ("reads the target's hidden states" if kind in ("heads", "chain")
                else "runs the target's own first layers")
        raise OptionsError(f"the {kind} drafter in {directory} {what}, which needs "
                           f"--backend transformers (not {backend})")
    return kind


def check_draft_pair(model: str, draft_model: str) -> None:
    """Refuse ``draft_model`` unless its tokenizer is ``model``'s, comparing the tokenizers
    alone (:func:`~restdecode.drafting.draft_model.check_same_tokenizer`), before any model
    loads."""
    from restdecode.drafting.draft_model import check_same_tokenizer
    from restdecode.models import load_tokenizer

    check_same_tokenizer(load_tokenizer(model), load_tokenizer(draft_model))


def default_memory_file(model: str) -> Path:
    """Where ``chat`` (and later ``serve``) keep the output memory of ``model`` by default."""
    import hashlib

    from restdecode.assets import restdecode_home

    tag = hashlib.sha256(model.encode()).hexdigest()[:8]
    return restdecode_home() / "memory" / f"{Path(model).name or 'model'}-{tag}.npz"


def compile_model(model, say: Callable[[str], None] = _say, *, hidden: bool = False):
    """``model`` wrapped for a compiled verification forward, its graphs built now (``hidden``:
    also those keeping the hidden states, for draft heads)."""
    from restdecode.compiled import compile_forward
    from restdecode.verify import build_graphs

    say("compiling the model's forward (minutes on a CPU, once per process) ...")
    compiled = compile_forward(model)
    say(f"compiled in {build_graphs(compiled, hidden=hidden):.0f} s")
    return compiled


def open_datastore(path: str | Path, tokenizer) -> "Datastore":
    """The datastore at ``path``, checked to be built with ``tokenizer``."""
    from restdecode.datastore import Datastore

    return Datastore.open(path, tokenizer)


def check_vocabulary(datastore: "Datastore", model) -> None:
    """Refuse a datastore whose token ids may reach past the model's embedding table: a draft
    must never hold an id the model cannot embed."""
    from restdecode.backends import as_backend

    model_vocab = as_backend(model).vocab_size
    if datastore.header.vocab_size > model_vocab:
        raise DatastoreError(
            f"datastore {datastore.path} holds token ids up to {datastore.header.vocab_size - 1}, "
            f"but the model embeds only {model_vocab} ids: build it with this model's tokenizer")

