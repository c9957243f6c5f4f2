"""The benchmark harness: decoding methods side by side on MT-Bench, HumanEval or your prompts.

``run_benchmark(config)`` loads the model (untimed) on its backend (transformers or llama.cpp:
our engine's methods run there), runs every method interleaved per prompt (see
:mod:`restdecode.benchmark.runner` for how time is measured), compares every row with the run's
baseline (hf-greedy, or llamacpp-greedy on the llamacpp backend), scores HumanEval completions,
and writes ``results.json``, ``report.md`` and PNG plots into ``config.out``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from restdecode.benchmark.methods import DEFAULT_METHODS, METHOD_NAMES, rest_drafter
from restdecode.engine import DEFAULT_MODEL, DRAFT_BRANCHES, DRAFT_K, default_datastore

if TYPE_CHECKING:
    from restdecode.engine import Engine


@dataclass
class BenchConfig:
    """What to run: a workload spec (``mtbench``, ``humaneval``, ``prompts:PATH``) and options.

    ``backend``: what runs the model for our engine's methods (``transformers``, ``llamacpp``,
    or ``auto``: see :func:`restdecode.backends.resolve_backend`); ``methods`` None: that
    backend's defaults (:func:`restdecode.benchmark.methods.default_methods`). ``draft_model``
    (with ``draft_backend``, ``draft_k``, ``draft_branches``, as ``Engine.load`` takes them)
    offers the draft-model methods, and adds them to the defaults.
    """

    workload: str
    out: Path
    model: str = DEFAULT_MODEL
    limit: int | None = None
    max_new_tokens: int = 128
    methods: list[str] | None = None
    turns: int = 1
    datastore: Path | None = None
    progress: bool = True
    resume: bool = False
    compile: bool = False  # our engine's methods through a torch.compile'd forward
    memory_file: Path | None = None  # restdecode-memory starts from it, and is saved to it
    backend: str = "auto"
    draft_model: str | None = None
    draft_backend: str = "auto"
    draft_k: int = DRAFT_K
    draft_branches: int = DRAFT_BRANCHES


@dataclass
class BenchOutcome:
    """The results document and the files written."""

    document: dict
    results: Path
    report: Path
    plots: list[Path]


def run_benchmark(config: BenchConfig) -> BenchOutcome:
    """Run the benchmark described by ``config`` and write its outputs."""
    from transformers.utils import logging as hf_logging

    from restdecode.benchmark import humaneval, plots, report
    from restdecode.benchmark.methods import (ENGINE_METHODS, EngineMethod, baseline_for,
                                              build_methods, check_method_names)
    from restdecode.benchmark.runner import Baseline, run_workload
    from restdecode.engine import Engine
    from restdecode.workloads import load_workload

    config = resolve_config(config)
    datastore_path = config.datastore or default_datastore(config.model)
    check_method_names(config.methods, has_datastore=datastore_path is not None,
                       model=config.model, has_draft_model=config.draft_model is not None)
    prompts = load_workload(config.workload, limit=config.limit, turns=config.turns)
    compile = config.compile and bool(ENGINE_METHODS.intersection(config.methods))
    engine = Engine.load(config.model, datastore=datastore_path, backend=config.backend,
                         compile=compile, draft=False, progress=config.progress,
                         draft_model=config.draft_model, draft_backend=config.draft_backend,
                         draft_k=config.draft_k, draft_branches=config.draft_branches)
    methods = build_methods(config.methods, engine, memory_file=config.memory_file)
    tokenizer, datastore = engine.tokenizer, engine.datastore
    baseline = Baseline(baseline_for(config.methods, config.backend), _end_ids(engine))
    hf_logging.set_verbosity_error()  # generate()'s per-call notices would drown the progress bar
    load_before = report.load_average()
    config.out.mkdir(parents=True, exist_ok=True)
    partial = _PartialRows(config.out, _run_identity(config, datastore_path), resume=config.resume)
    done = partial.rows
    done_ids = {row.prompt_id for row in done}

    def recall_done_outputs() -> None:
        # A resumed run's memory holds what the interrupted one had produced, in order.
        for method in methods:
            method.recall([row.token_ids for row in done if row.method == method.name])

    rows = done + run_workload(
        methods, tokenizer, [p for p in prompts if p.id not in done_ids],
        max_new_tokens=config.max_new_tokens, turns=config.turns, progress=config.progress,
        on_prompt_done=partial.append, on_warmed_up=recall_done_outputs, baseline=baseline)
    if config.workload == "humaneval":
        humaneval.score_rows(rows, prompts)
    document = report.results_document(
        rows, config.methods, workload=config.workload, model=_model_info(config.model, engine),
        datastore=_datastore_info(datastore_path, datastore), settings=_settings(config, engine),
        baseline=baseline.method, load_before=load_before)
    plot_paths = plots.write_plots(document, config.out)
    outcome = BenchOutcome(document, report.write_results(document, config.out),
                           report.write_report(document, plot_paths, config.out), plot_paths)
    partial.path.unlink(missing_ok=True)  # results.json holds them all now
    for method in methods:
        if isinstance(method, EngineMethod):
            method.save_memory()
    return outcome


def resolve_config(config: BenchConfig) -> BenchConfig:
    """``config`` with its backend resolved (``auto``) and its methods defaulted for it;
    OptionsError for ``compile`` on llama.cpp."""
    from restdecode.backends import resolve_backend
    from restdecode.benchmark.methods import default_methods
    from restdecode.errors import OptionsError

    backend = resolve_backend(config.backend, config.model, compile=config.compile)
    if config.compile and backend != "transformers":
        raise OptionsError("--compile applies to the transformers backend only")
    methods = (list(config.methods) if config.methods
               else default_methods(backend, draft_model=config.draft_model is not None,
                                    heads=is_heads(config.draft_model)))
    return replace(config, backend=backend, methods=methods)


def is_heads(draft_model: str | None) -> bool:
    """Whether ``draft_model`` is a directory of trained draft heads (or a draft chain)."""
    from restdecode.drafting.early_exit import is_trained_drafter, read_drafter_config

    return (draft_model is not None and is_trained_drafter(draft_model)
            and read_drafter_config(draft_model)["kind"] in ("heads", "chain"))


def _end_ids(engine: "Engine") -> frozenset[int]:
    """Tokens that end a generation: the backend's and the tokenizer's (the hf-* methods')."""
    ids = engine.backend.eos_token_ids(engine.tokenizer) | {engine.tokenizer.eos_token_id}
    return frozenset(ids - {None})


class _PartialRows:
    """Rows appended as JSON lines after each prompt, so an interrupted long run keeps its data.

    ``rows.partial.jsonl`` starts with one line describing the run (workload, methods, model,
    settings); ``resume`` reads back the rows of a run with the same description, and refuses
    another run's rows.
    """

    def __init__(self, out: Path, identity: dict, *, resume: bool) -> None:
        import json
        import os

        from restdecode.errors import RestdecodeError

        self.path = out / "rows.partial.jsonl"
        self.rows: list = []
        if resume and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            found = json.loads(lines[0]).get("run") if lines else None
            if found != identity:
                raise RestdecodeError(
                    f"{self.path} holds another run ({found}); cannot resume {identity}")
            self.rows = _finished_rows(lines[1:])
        # Rewritten through a temporary file: an interruption now loses nothing already kept.
        temp = self.path.with_name(f".{self.path.name}.tmp")
        with temp.open("w", encoding="utf-8") as lines:
            lines.write(json.dumps({"run": identity}) + "\n")
            _write_rows(lines, self.rows)
        os.replace(temp, self.path)

    def append(self, rows) -> None:
        """Append one prompt's rows (or several prompts')."""
        with self.path.open("a", encoding="utf-8") as lines:
            _write_rows(lines, rows)


def _write_rows(lines, rows) -> None:
    """Rows as JSON lines, each prompt's rows closed by a ``{"done": prompt_id}`` line."""
    import json

    for index, row in enumerate(rows):
        lines.write(json.dumps(row.to_json()) + "\n")
        if index + 1 == len(rows) or rows[index + 1].prompt_id != row.prompt_id:
            lines.write(json.dumps({"done": row.prompt_id}) + "\n")


def _finished_rows(lines: list[str]) -> list:
    """The rows of every prompt whose done line was written (an interrupted prompt runs again)."""
    import json

    from restdecode.benchmark.runner import Row

    pending, finished = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by the interruption: nothing after it was written
        if "done" in record:
            finished += [row for row in pending if row.prompt_id == record["done"]]
            pending = []
        else:
            if "identical_to_hf_greedy" in record:  # written before the baseline had a name
                record["identical_to_baseline"] = record.pop("identical_to_hf_greedy")
            pending.append(Row(**record))
    return finished


def _run_identity(config: BenchConfig, datastore_path: Path | None) -> dict:
    """What must match for a resumed run to continue an interrupted one (``config`` resolved)."""
    identity = {"workload": config.workload, "model": config.model, "methods": config.methods,
                "max_new_tokens": config.max_new_tokens, "turns": config.turns,
                "limit": config.limit, "datastore": str(datastore_path) if datastore_path else None}
    # Only when set: runs interrupted before these options existed still resume.
    if config.compile:
        identity["compile"] = True
    if config.backend != "transformers":
        identity["backend"] = config.backend
    if config.memory_file is not None:
        identity["memory_file"] = str(config.memory_file)
    if config.draft_model is not None:
        identity["draft"] = _draft_settings(config)
    return identity


def _draft_settings(config: BenchConfig) -> dict | None:
    """The draft model and its shape (None without one)."""
    if config.draft_model is None:
        return None
    return {"model": config.draft_model, "backend": config.draft_backend, "k": config.draft_k,
            "branches": config.draft_branches}


def _model_info(name: str, engine: "Engine") -> dict:
    if engine.backend.name == "llamacpp":
        return {"name": name, **_gguf_info(engine.backend.path)}
    from restdecode.compiled import eager

    model = eager(engine.model)
    return {"name": name, "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def _gguf_info(path: Path) -> dict:
    """Architecture, parameters and llama.cpp's description (e.g. ``llama 256M Q4_1``) of a
    GGUF file; loaded memory-mapped, so reading them costs no second copy of the weights."""
    import ctypes

    import llama_cpp

    model = llama_cpp.llama_model_load_from_file(str(path).encode(),
                                                 llama_cpp.llama_model_default_params())
    try:
        text = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_meta_val_str(model, b"general.architecture", text, len(text))
        architecture = text.value.decode(errors="replace")
        llama_cpp.llama_model_desc(model, text, len(text))
        return {"architecture": architecture,
                "parameters": int(llama_cpp.llama_model_n_params(model)),
                "description": text.value.decode(errors="replace"), "gguf": str(path),
                "size_bytes": path.stat().st_size}
    finally:
        llama_cpp.llama_model_free(model)


def _datastore_info(path: Path | None, datastore) -> dict | None:
    if datastore is None:
        return None
    from dataclasses import asdict

    info = {"path": str(path), "size_bytes": Path(path).stat().st_size}
    info.update({k: v for k, v in asdict(datastore.header).items()})
    return info


def _settings(config: BenchConfig, engine: "Engine") -> dict:
    from restdecode.benchmark.methods import LLAMACPP_METHODS, llamacpp_settings
    from restdecode.benchmark.runner import WARMUP_TOKENS

    settings = {"max_new_tokens": config.max_new_tokens, "limit": config.limit,
                "turns": config.turns, "warmup_tokens": WARMUP_TOKENS, "greedy": True,
                "batch_size": 1, "backend": config.backend, "compiled_engine": config.compile,
                "memory_file": str(config.memory_file) if config.memory_file else None,
                "draft_model": _draft_settings(config),
                "timing": "decode_s = e2e_s - prefill_s; prefill_s = a max_new_tokens=1 "
                          "generation of the same prompt, for every method"}
    if config.backend == "llamacpp" or LLAMACPP_METHODS.intersection(config.methods):
        settings["llamacpp"] = llamacpp_settings(engine)
    return settings


__all__ = ["BenchConfig", "BenchOutcome", "DEFAULT_METHODS", "DEFAULT_MODEL", "METHOD_NAMES",
           "default_datastore", "resolve_config", "rest_drafter", "run_benchmark"]
