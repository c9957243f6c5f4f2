"""The benchmark harness: decoding methods side by side on MT-Bench, HumanEval or your prompts.

``run_benchmark(config)`` loads the model (untimed), runs every method interleaved per prompt
(see :mod:`restdecode.benchmark.runner` for how time is measured), scores HumanEval
completions, and writes ``results.json``, ``report.md`` and PNG plots into ``config.out``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from restdecode.benchmark.methods import DEFAULT_METHODS, METHOD_NAMES, rest_drafter
from restdecode.engine import DEFAULT_MODEL, default_datastore


@dataclass
class BenchConfig:
    """What to run: a workload spec (``mtbench``, ``humaneval``, ``prompts:PATH``) and options."""

    workload: str
    out: Path
    model: str = DEFAULT_MODEL
    limit: int | None = None
    max_new_tokens: int = 128
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    turns: int = 1
    datastore: Path | None = None
    progress: bool = True
    resume: bool = False
    compile: bool = False  # our engine's methods through a torch.compile'd forward
    memory_file: Path | None = None  # restdecode-memory starts from it, and is saved to it


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
    from restdecode.benchmark.methods import (HF_METHODS, EngineMethod, build_methods,
                                              check_method_names)
    from restdecode.benchmark.runner import run_workload
    from restdecode.compiled import eager
    from restdecode.engine import Engine
    from restdecode.workloads import load_workload

    datastore_path = config.datastore or default_datastore(config.model)
    check_method_names(config.methods, has_datastore=datastore_path is not None)
    prompts = load_workload(config.workload, limit=config.limit, turns=config.turns)
    compile = config.compile and bool(set(config.methods) - HF_METHODS)
    engine = Engine.load(config.model, datastore=datastore_path, compile=compile, draft=False,
                         progress=config.progress)
    methods = build_methods(config.methods, engine, memory_file=config.memory_file)
    model, tokenizer, datastore = eager(engine.model), engine.tokenizer, engine.datastore
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
        on_prompt_done=partial.append, on_warmed_up=recall_done_outputs)
    if config.workload == "humaneval":
        humaneval.score_rows(rows, prompts)
    document = report.results_document(
        rows, config.methods, workload=config.workload, model=_model_info(config.model, model),
        datastore=_datastore_info(datastore_path, datastore), settings=_settings(config),
        load_before=load_before)
    plot_paths = plots.write_plots(document, config.out)
    outcome = BenchOutcome(document, report.write_results(document, config.out),
                           report.write_report(document, plot_paths, config.out), plot_paths)
    partial.path.unlink(missing_ok=True)  # results.json holds them all now
    for method in methods:
        if isinstance(method, EngineMethod):
            method.save_memory()
    return outcome


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
            pending.append(Row(**record))
    return finished


def _run_identity(config: BenchConfig, datastore_path: Path | None) -> dict:
    """What must match for a resumed run to continue an interrupted one."""
    identity = {"workload": config.workload, "model": config.model, "methods": config.methods,
                "max_new_tokens": config.max_new_tokens, "turns": config.turns,
                "limit": config.limit, "datastore": str(datastore_path) if datastore_path else None}
    if config.compile:  # only then: runs interrupted before the option existed still resume
        identity["compile"] = True
    if config.memory_file is not None:
        identity["memory_file"] = str(config.memory_file)
    return identity


def _model_info(name: str, model) -> dict:
    return {"name": name, "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def _datastore_info(path: Path | None, datastore) -> dict | None:
    if datastore is None:
        return None
    from dataclasses import asdict

    info = {"path": str(path), "size_bytes": Path(path).stat().st_size}
    info.update({k: v for k, v in asdict(datastore.header).items()})
    return info


def _settings(config: BenchConfig) -> dict:
    from restdecode.benchmark.runner import WARMUP_TOKENS

    return {"max_new_tokens": config.max_new_tokens, "limit": config.limit, "turns": config.turns,
            "warmup_tokens": WARMUP_TOKENS, "greedy": True, "batch_size": 1,
            "compiled_engine": config.compile,
            "memory_file": str(config.memory_file) if config.memory_file else None,
            "timing": "decode_s = e2e_s - prefill_s; prefill_s = a max_new_tokens=1 generation "
                      "of the same prompt, for every method"}


__all__ = ["BenchConfig", "BenchOutcome", "DEFAULT_METHODS", "DEFAULT_MODEL", "METHOD_NAMES", "default_datastore",
           "rest_drafter", "run_benchmark"]
