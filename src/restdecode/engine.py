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
    from restdecode.drafting.planner import AcceptanceCalibration
    from restdecode.latency import LatencyProfile
    from restdecode.options import GenerationOptions

DEFAULT_MODEL = "smollm2-135m-instruct"
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
                 say: Callable[[str], None] = _say) -> None:
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
        self._batch_profile: "LatencyProfile | None" = None
        if datastore is not None:
            check_vocabulary(datastore, model)
        if budget is not None and budget < 0:
            raise OptionsError(f"budget must be >= 0 nodes, got {budget}")
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
             say: Callable[[str], None] = _say) -> "Engine":
        """Load ``model`` (asset name, GGUF file or Hugging Face directory) on ``backend``
        (``transformers``; ``llamacpp`` for a GGUF; ``auto``: llama.cpp for a GGUF when it is
        installed, else transformers), and ``datastore`` (a file from ``restdecode
        build-datastore``), then build the default drafter.

        The datastore is checked to exist before the model is loaded. With ``compile`` (the
        transformers backend only), the model's verification forward runs through
        ``torch.compile``; its graphs are built here (minutes on a CPU, said through ``say``).
        """
        from restdecode.backends import resolve_backend
        from restdecode.models import load, load_llamacpp

        backend = resolve_backend(backend, model, compile=compile)
        if compile and backend != "transformers":
            raise OptionsError("--compile applies to the transformers backend only")
        path = Path(datastore).expanduser() if datastore is not None else None
        if path is not None and not path.is_file():
            raise DatastoreError(f"datastore {path} does not exist (build one with "
                                 "`restdecode build-datastore`)")
        loaded, tokenizer = load_llamacpp(model) if backend == "llamacpp" else load(model)
        store = open_datastore(path, tokenizer) if path is not None else None
        if store is not None:
            check_vocabulary(store, loaded)  # before minutes of compiling
        if compile:
            loaded = compile_model(loaded, say)
        return cls(loaded, tokenizer, datastore=store, draft=draft, budget=budget, memory=memory,
                   memory_file=memory_file, name=model, progress=progress, say=say)

    @property
    def profile(self) -> "LatencyProfile":
        """The model's latency profile on this machine (measured on first use, then cached)."""
        if self._profile is None:
            from restdecode.latency import profile_for

            self._profile = profile_for(self.model, progress=self.progress)
        return self._profile

    @property
    def plans_drafts(self) -> bool:
        """Whether this engine's drafts are sized by the latency profile (not a fixed budget)."""
        return self.drafter is not None and self.budget is None

    @property
    def batch_profile(self) -> "LatencyProfile":
        """The model's latency profile for batched forwards (many rows, one packed cache) on
        this machine, which the batch planner prices its steps by (measured on first use, then
        cached)."""
        if self._batch_profile is None:
            from restdecode.latency import batch_profile_for

            self._batch_profile = batch_profile_for(self.model, progress=self.progress)
        return self._batch_profile

    def new_drafter(self, *, budget: int | None = None,
                    memory: "MemoryDrafter | None" = None,
                    learned: "ContinuationDrafter | None" = None,
                    calibration: "AcceptanceCalibration | None" = None) -> "Drafter":
        """A fresh default drafter (:func:`restdecode.drafting.default_drafter`) over this
        engine's datastore: sized by the latency profile, or fixed at ``budget`` nodes
        (default: the engine's ``budget``);
        ``memory`` (default: the engine's, if any) as its context source; ``learned`` an extra
        source (e.g. the server's learned memory of a tenant). The planner learns into
        ``calibration``, by default ``engine.calibration``, which all this engine's drafters share
        (pass a fresh one to keep a drafter's learning apart, as the benchmark's methods do)."""
        from restdecode.drafting import default_drafter

        memory = memory if memory is not None else self.memory
        budget = budget if budget is not None else self.budget
        calibration = calibration if calibration is not None else self.calibration
        if budget is not None:
            return default_drafter(self.datastore, budget=budget, memory=memory, learned=learned)
        return default_drafter(self.datastore, profile=self.profile, memory=memory,
                               learned=learned, calibration=calibration)

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


def default_memory_file(model: str) -> Path:
    """Where ``chat`` (and later ``serve``) keep the output memory of ``model`` by default."""
    import hashlib

    from restdecode.assets import restdecode_home

    tag = hashlib.sha256(model.encode()).hexdigest()[:8]
    return restdecode_home() / "memory" / f"{Path(model).name or 'model'}-{tag}.npz"


def compile_model(model, say: Callable[[str], None] = _say):
    """``model`` wrapped for a compiled verification forward, its graphs built now."""
    from restdecode.compiled import compile_forward
    from restdecode.verify import build_graphs

    say("compiling the model's forward (minutes on a CPU, once per process) ...")
    compiled = compile_forward(model)
    say(f"compiled in {build_graphs(compiled):.0f} s")
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

