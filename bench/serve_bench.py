"""Serving benchmark: `restdecode serve` under load, like vLLM's benchmarks/benchmark_serving.py.

Not a test. Run it on a quiet machine; nothing else should share its cores. It starts one fresh
`restdecode serve` subprocess per configuration (port 0, the URL read from its banner), waits for
/health, sends one warm-up request (not timed; the model's loading time is never timed either),
then streams greedy (temperature 0) chat completions with the async `openai` client:

  1. speculation on (the default server) vs --no-speculation, at each --concurrency C: all the
     prompts, at most C in flight;
  2. learned memory (unless --skip-memory): a server with --memory (a fresh temporary directory)
     answers the prompts twice, one at a time (pass 1, pass 2), and so does one without memory.
     Greedy answers repeat exactly, so pass 2 with memory should accept more tokens per step.

Per configuration and concurrency: TTFT (request start -> first chunk with text), TPOT
((end-to-end - TTFT) / (output tokens - 1)), ITL, output tokens/s and requests/s (all requests'
completion tokens, and their number, over the wall time from the first request's start to the
last one's end) and mean tokens per decoding step (the server's `restdecode` extension object).
ITL is the raw gap between consecutive chunks with text, as vLLM reports it: the server sends
one chunk per decoding step, so with speculation a chunk carries all the tokens its step accepted
and ITL is a time per step, not per token (TPOT is per token).

Losslessness: every answer's token ids are recorded, and the same prompt must get the same tokens
in every configuration, concurrency and pass; a difference is reported (exit status 1).

Outputs in --out: results.json (every request, the summaries, the command line, machine facts),
report.md (the tables, also printed at the end), serve.png (output tok/s and TTFT p50 vs
concurrency, speculation on vs off), and each server's stderr as server-<name>.log.

    .venv/bin/python bench/serve_bench.py                      # smollm2-135m-instruct, MT-Bench
    .venv/bin/python bench/serve_bench.py --backend llamacpp --concurrency 1,4,16 --limit 32
    .venv/bin/python bench/serve_bench.py --prompts prompts:bench/prompts/raw-completions.jsonl \\
        --extra-serve-args="--budget 6"

Prompts with chat messages go to /v1/chat/completions, raw text prompts (prompts:PATH lines with
"prompt") to /v1/completions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from restdecode.engine import DEFAULT_MODEL
from restdecode.latency import cpu_model
from restdecode.workloads import Prompt, load_workload

DEFAULT_OUT = Path("bench/out/serve")
STARTUP_S = 1800  # a first run may download the model and measure its latency profile
HEALTH_S = 60
REQUEST_TIMEOUT_S = 600
BANNER = re.compile(r"restdecode serve: (?P<url>http://\S+)/v1 \| model .+ on (?P<backend>\S+) "
                    r"\| datastore (?P<datastore>.+?) \| speculation")
WARMUP_TEXT = "Hello! Who are you?"


# ---------------------------------------------------------------------------------------------
# Servers


class Server:
    """A `restdecode serve` subprocess on a free port: ``url``, ``model_id``, ``backend``.

    A context manager: the process is stopped on leaving, whatever happened meanwhile.
    """

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.url = self.backend = self.datastore = self.banner = self.model_id = ""
        self.startup_s = 0.0
        self._banner = threading.Event()

    def __enter__(self) -> "Server":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "restdecode", "serve", "--port", "0", *self.args]

    def start(self) -> None:
        """Start the process, parse its banner, wait for /health and read the model id."""
        print(f"[{self.name}] starting: restdecode serve {shlex.join(self.command[4:])}",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env=env)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._banner.wait(STARTUP_S) or not self.url:
            raise RuntimeError(f"[{self.name}] the server did not start:\n{self.tail()}")
        self._wait_healthy()
        self.model_id = self._model_id()
        self.startup_s = time.perf_counter() - started
        print(f"[{self.name}] ready in {self.startup_s:.1f} s at {self.url} "
              f"({self.backend})", file=sys.stderr, flush=True)

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            for line in self.process.stderr:
                log.write(line)
                log.flush()
                self.lines.append(line)
                if match := BANNER.match(line):
                    self.banner = line.strip()
                    self.url = match["url"]
                    self.backend, self.datastore = match["backend"], match["datastore"]
                    self._banner.set()
        self._banner.set()  # the process ended: stop waiting

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + HEALTH_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"[{self.name}] the server never became healthy:\n{self.tail()}")

    def _model_id(self) -> str:
        import httpx

        return httpx.get(self.url + "/v1/models", timeout=10).json()["data"][0]["id"]

    def tail(self, lines: int = 30) -> str:
        return "".join(self.lines[-lines:])

    def facts(self) -> dict:
        return {"name": self.name, "command": shlex.join(self.command), "banner": self.banner,
                "backend": self.backend, "datastore": self.datastore, "model_id": self.model_id,
                "startup_s": round(self.startup_s, 3), "log": self.log_path.name}

    def stop(self) -> None:
        """Terminate (then kill, if it lingers) the process."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass
class Measurement:
    """One streamed request. Times in seconds; ``start_s`` and ``end_s`` from the batch's start."""

    prompt_id: str
    start_s: float = 0.0
    end_s: float = 0.0
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    chunks: int = 0
    steps: int = 0
    tokens_per_step: float = 0.0
    finish_reason: str | None = None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.completion_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)

    def record(self) -> dict:
        return asdict(self) | {"e2e_s": self.e2e_s, "tpot_s": self.tpot_s}


async def stream_request(client: Any, model: str, prompt: Prompt, max_tokens: int,
                         origin: float) -> Measurement:
    """Stream one greedy completion of ``prompt`` and time its chunks."""
    measurement = Measurement(prompt_id=prompt.id)
    pieces: list[str] = []
    times: list[float] = []
    started = time.perf_counter()
    measurement.start_s = started - origin
    try:
        async for chunk in await _create(client, model, prompt, max_tokens):
            now = time.perf_counter()
            _read_chunk(chunk, measurement, pieces, times, now)
    except Exception as error:  # noqa: BLE001 - one failed request is a result, not a crash
        measurement.error = f"{type(error).__name__}: {error}"
    measurement.end_s = time.perf_counter() - origin
    measurement.text = "".join(pieces)
    measurement.chunks = len(times)
    if times:
        measurement.ttft_s = times[0] - started
        measurement.itl_s = [later - earlier for earlier, later in zip(times, times[1:])]
    return measurement


async def _create(client: Any, model: str, prompt: Prompt, max_tokens: int) -> Any:
    common = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}}
    if prompt.messages is not None:
        return await client.chat.completions.create(messages=prompt.messages, **common)
    return await client.completions.create(prompt=prompt.text, **common)


def _read_chunk(chunk: Any, measurement: Measurement, pieces: list[str], times: list[float],
                now: float) -> None:
    """Take one chunk's text (timed), finish reason, usage and `restdecode` extension."""
    if chunk.choices:
        choice = chunk.choices[0]
        piece = choice.delta.content if hasattr(choice, "delta") else choice.text
        if piece:
            pieces.append(piece)
            times.append(now)
        measurement.finish_reason = choice.finish_reason or measurement.finish_reason
    extension = (chunk.model_extra or {}).get("restdecode")
    if extension:
        measurement.steps = extension["steps"]
        measurement.tokens_per_step = extension["tokens_per_step"]
        measurement.token_ids = list(extension["completion_token_ids"])
    if chunk.usage is not None:
        measurement.completion_tokens = chunk.usage.completion_tokens


def client_for(server: Server, concurrency: int) -> Any:
    """An async OpenAI client for ``server`` with room for ``concurrency`` streams."""
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="restdecode-bench", max_retries=0,
                       timeout=REQUEST_TIMEOUT_S,
                       http_client=httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S))


async def run_batch(server: Server, prompts: list[Prompt], concurrency: int,
                    max_tokens: int) -> list[Measurement]:
    """All ``prompts``, at most ``concurrency`` in flight; results in prompt order."""
    client = client_for(server, concurrency)
    gate = asyncio.Semaphore(concurrency)
    origin = time.perf_counter()

    async def one(prompt: Prompt) -> Measurement:
        async with gate:
            return await stream_request(client, server.model_id, prompt, max_tokens, origin)

    try:
        return list(await asyncio.gather(*(one(prompt) for prompt in prompts)))
    finally:
        await client.close()


def warm_up(server: Server, prompts: list[Prompt], max_tokens: int) -> None:
    """One untimed request of the first prompt's kind (chat or text) but unrelated content."""
    first = prompts[0]
    warm = (Prompt(id="warm-up", messages=[{"role": "user", "content": WARMUP_TEXT}])
            if first.messages is not None else Prompt(id="warm-up", text=WARMUP_TEXT))
    result = asyncio.run(run_batch(server, [warm], 1, max_tokens))[0]
    if result.error:
        raise RuntimeError(f"[{server.name}] the warm-up request failed: {result.error}\n"
                           f"{server.tail()}")


# ---------------------------------------------------------------------------------------------
# Summaries


def percentiles(values: list[float]) -> dict:
    """Mean, p50 and p99 in milliseconds (None without values)."""
    if not values:
        return {"mean_ms": None, "p50_ms": None, "p99_ms": None}
    array = np.asarray(values) * 1000
    return {"mean_ms": float(array.mean()), "p50_ms": float(np.percentile(array, 50)),
            "p99_ms": float(np.percentile(array, 99))}


def summarize(measurements: list[Measurement]) -> dict:
    """The run's latency percentiles, throughput and mean tokens per decoding step."""
    done = [m for m in measurements if m.error is None]
    wall = (max(m.end_s for m in done) - min(m.start_s for m in done)) if done else 0.0
    tokens = sum(m.completion_tokens for m in done)
    steps = sum(m.steps for m in done)
    accepted = sum(m.tokens_per_step * m.steps for m in done)
    return {
        "requests": len(measurements), "failed": len(measurements) - len(done),
        "wall_s": wall, "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall if wall else None,
        "requests_per_s": len(done) / wall if wall else None,
        "tokens_per_step": accepted / steps if steps else None,
        "ttft": percentiles([m.ttft_s for m in done if m.ttft_s is not None]),
        "tpot": percentiles([m.tpot_s for m in done if m.tpot_s is not None]),
        "itl": percentiles([gap for m in done for gap in m.itl_s]),
        "e2e": percentiles([m.e2e_s for m in done]),
    }


def check_lossless(runs: list[dict]) -> dict:
    """Whether every prompt got the same token ids in every run (failed requests skipped)."""
    answers: dict[str, dict[str, list[int]]] = {}
    for run in runs:
        for request in run["requests"]:
            if request["error"] is None:
                answers.setdefault(request["prompt_id"], {})[run["label"]] = request["token_ids"]
    mismatches = []
    for prompt_id, by_run in answers.items():
        reference_label, reference = next(iter(by_run.items()))
        for label, token_ids in by_run.items():
            if token_ids != reference:
                mismatches.append({"prompt_id": prompt_id, "run": label,
                                   "reference_run": reference_label,
                                   "first_difference": _first_difference(token_ids, reference)})
    return {"prompts": len(answers), "identical": not mismatches, "mismatches": mismatches}


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ---------------------------------------------------------------------------------------------
# The benchmark


def serve_args(args: argparse.Namespace, *extra: str) -> list[str]:
    """The serve arguments every configuration shares, then ``extra``, then --extra-serve-args."""
    shared = ["--model", args.model, "--backend", args.backend,
              "--max-queue", str(max(64, max(args.concurrency)))]
    if args.datastore is not None:
        shared += ["--datastore", str(args.datastore)]
    return [*shared, *extra, *shlex.split(args.extra_serve_args)]


def run_server(name: str, serve: list[str], args: argparse.Namespace, prompts: list[Prompt],
               plan: list[tuple[int, int | None]], servers: list[dict]) -> list[dict]:
    """Start a fresh server, warm it up, run each (concurrency, pass) of ``plan``, stop it."""
    runs = []
    with Server(name, serve, args.out / f"server-{_slug(name)}.log") as server:
        warm_up(server, prompts, args.max_tokens)
        servers.append(server.facts())
        for concurrency, pass_number in plan:
            label = f"{name}, concurrency {concurrency}" + (
                f", pass {pass_number}" if pass_number else "")
            print(f"[{name}] {len(prompts)} requests, concurrency {concurrency}"
                  + (f", pass {pass_number}" if pass_number else ""), file=sys.stderr, flush=True)
            measurements = asyncio.run(run_batch(server, prompts, concurrency, args.max_tokens))
            runs.append({"label": label, "configuration": name, "concurrency": concurrency,
                         "pass": pass_number, "server": name, "summary": summarize(measurements),
                         "requests": [m.record() for m in measurements]})
            _say_summary(label, runs[-1]["summary"])
    return runs


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _say_summary(label: str, summary: dict) -> None:
    print(f"  {label}: {_number(summary['output_tokens_per_s'])} output tok/s, TTFT p50 "
          f"{_number(summary['ttft']['p50_ms'])} ms, {_number(summary['tokens_per_step'], 2)} "
          f"tokens/step, {summary['failed']} failed", file=sys.stderr, flush=True)


def benchmark(args: argparse.Namespace, prompts: list[Prompt]) -> tuple[list[dict], list[dict]]:
    """Every configuration, one server after the other: (runs, server facts)."""
    runs: list[dict] = []
    servers: list[dict] = []
    load = [(concurrency, None) for concurrency in args.concurrency]
    runs += run_server("speculation on", serve_args(args), args, prompts, load, servers)
    runs += run_server("speculation off", serve_args(args, "--no-speculation"), args, prompts,
                       load, servers)
    if not args.skip_memory:
        passes = [(1, 1), (1, 2)]
        runs += run_server("memory off", serve_args(args), args, prompts, passes, servers)
        memory = Path(tempfile.mkdtemp(prefix="restdecode-serve-bench-memory-"))
        try:
            runs += run_server("memory on", serve_args(args, "--memory", str(memory)), args,
                               prompts, passes, servers)
        finally:
            shutil.rmtree(memory, ignore_errors=True)
    return runs, servers


# ---------------------------------------------------------------------------------------------
# Reports


def machine_facts(args: argparse.Namespace, servers: list[dict]) -> dict:
    """What the numbers depend on besides the code."""
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(), "platform": platform.platform(),
        "python": platform.python_version(), "packages": _versions(),
        "git_commit": _git_commit(), "model": args.model,
        "backend": servers[0]["backend"] if servers else args.backend,
        "datastore": servers[0]["datastore"] if servers else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def _versions() -> dict:
    versions = {}
    for package in ("restdecode", "torch", "transformers", "llama_cpp_python", "openai"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def load_table(runs: list[dict]) -> list[str]:
    """Markdown: speculation on/off by concurrency."""
    lines = ["| configuration | concurrency | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | "
             "TPOT p99 ms | ITL p50 ms | ITL p99 ms | output tok/s | vs off | req/s | "
             "tokens/step | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    off = {run["concurrency"]: run["summary"]["output_tokens_per_s"]
           for run in runs if run["configuration"] == "speculation off"}
    for run in runs:
        if run["pass"] is not None:
            continue
        s = run["summary"]
        base = off.get(run["concurrency"])
        ratio = (s["output_tokens_per_s"] / base
                 if base and s["output_tokens_per_s"] is not None else None)
        lines.append(f"| {run['configuration']} | {run['concurrency']} | "
                     f"{_number(s['ttft']['p50_ms'])} | {_number(s['ttft']['p99_ms'])} | "
                     f"{_number(s['tpot']['p50_ms'])} | {_number(s['tpot']['p99_ms'])} | "
                     f"{_number(s['itl']['p50_ms'])} | {_number(s['itl']['p99_ms'])} | "
                     f"{_number(s['output_tokens_per_s'])} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | "
                     f"{_number(s['requests_per_s'], 2)} | {_number(s['tokens_per_step'], 2)} | "
                     f"{s['failed']} |")
    return lines


def memory_table(runs: list[dict]) -> list[str]:
    """Markdown: learned memory off/on, pass 1 and 2."""
    lines = ["| pass | memory | tokens/step | output tok/s | TTFT p50 ms | TPOT p50 ms | failed |",
             "|---|---|---|---|---|---|---|"]
    memory_runs = [run for run in runs if run["pass"] is not None]
    for run in sorted(memory_runs, key=lambda run: (run["pass"], run["configuration"])):
        s = run["summary"]
        lines.append(f"| {run['pass']} | {run['configuration'].removeprefix('memory ')} | "
                     f"{_number(s['tokens_per_step'], 2)} | {_number(s['output_tokens_per_s'])} | "
                     f"{_number(s['ttft']['p50_ms'])} | {_number(s['tpot']['p50_ms'])} | "
                     f"{s['failed']} |")
    return lines


def report(results: dict) -> str:
    """report.md: what ran, the tables, the losslessness check."""
    machine, lossless = results["machine"], results["lossless"]
    lines = [
        "# restdecode serve benchmark", "",
        f"`{results['command']}`", "",
        f"Model {machine['model']} on {machine['backend']}, datastore {machine['datastore']}; "
        f"{results['prompts']['count']} prompts ({results['prompts']['spec']}), "
        f"max_tokens {results['max_tokens']}, temperature 0, streamed. "
        f"{machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['platform']}.", "",
        "TTFT: request start to the first chunk with text. TPOT: (end-to-end - TTFT) / "
        "(output tokens - 1). ITL: the raw gap between consecutive chunks with text; the server "
        "sends one chunk per decoding step, so with speculation ITL is a time per step (several "
        "tokens), not per token. Output tok/s and req/s: over the wall time from the first "
        "request's start to the last one's end. Tokens/step: mean tokens committed per decoding "
        "step. Each server was started fresh and warmed up with one request; loading is not "
        "timed.", "",
        "## Speculation on vs off", "", *load_table(results["runs"]), "",
    ]
    if any(run["pass"] is not None for run in results["runs"]):
        lines += ["## Learned memory (concurrency 1, the prompts answered twice)", "",
                  *memory_table(results["runs"]), ""]
    verdict = ("identical in every configuration" if lossless["identical"] else
               f"DIFFERENT in {len(lossless['mismatches'])} cases (see results.json)")
    lines += ["## Losslessness", "",
              f"Greedy answers of {lossless['prompts']} prompts: {verdict}.", ""]
    return "\n".join(lines)


def plot(runs: list[dict], title: str, path: Path) -> None:
    """Output tok/s and TTFT p50 vs concurrency, speculation on vs off."""
    from matplotlib.figure import Figure  # the object API and Agg canvas: no GUI, no pyplot

    figure = Figure(figsize=(10, 4), layout="constrained")
    throughput, ttft = figure.subplots(1, 2)
    figure.suptitle(title)
    concurrencies = sorted({run["concurrency"] for run in runs if run["pass"] is None})
    for name in ("speculation on", "speculation off"):
        chosen = [run for run in runs if run["configuration"] == name]
        x = [run["concurrency"] for run in chosen]
        throughput.plot(x, [run["summary"]["output_tokens_per_s"] or np.nan for run in chosen],
                        marker="o", label=name)
        ttft.plot(x, [run["summary"]["ttft"]["p50_ms"] or np.nan for run in chosen],
                  marker="o", label=name)
    for axes, title in ((throughput, "output tokens/s"), (ttft, "TTFT p50 (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axes.set_xlabel("concurrency")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# Command line


def concurrency_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrencies must be >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"passed to serve: asset name, .gguf or Hugging Face directory "
                             f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--backend", choices=("auto", "transformers", "llamacpp"),
                        default="auto", help="passed to serve (default: auto)")
    parser.add_argument("--datastore", type=Path, default=None, metavar="FILE",
                        help="passed to serve (default: serve's own default)")
    parser.add_argument("--prompts", default="mtbench", metavar="SPEC",
                        help="mtbench (first turns), humaneval or prompts:PATH (JSONL lines "
                             '{"prompt": ...} or {"messages": [...]}, as `restdecode bench` '
                             "takes) (default: mtbench)")
    parser.add_argument("--limit", type=int, default=16, metavar="N",
                        help="the first N prompts (default: 16)")
    parser.add_argument("--max-tokens", type=int, default=128, metavar="N",
                        help="max_tokens of every request (default: 128)")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 4, 16],
                        metavar="C,C,...",
                        help="requests in flight at most, one run each (default: 1,4,16)")
    parser.add_argument("--skip-memory", action="store_true",
                        help="skip the learned-memory comparison")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"where results go (default: {DEFAULT_OUT})")
    parser.add_argument("--extra-serve-args", default="", metavar="ARGS",
                        help='more serve arguments for every server, e.g. "--budget 6"; a '
                             "single option needs the = form: --extra-serve-args=--compile")
    args = parser.parse_args(argv)
    if args.limit < 1 or args.max_tokens < 1:
        parser.error("--limit and --max-tokens must be at least 1")
    return args


def _terminate_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that every server is stopped."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _terminate_on_sigterm()
    prompts = load_workload(args.prompts, limit=args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        runs, servers = benchmark(args, prompts)
    except KeyboardInterrupt:
        print("interrupted: every server was stopped, nothing was written", file=sys.stderr)
        return 130
    except RuntimeError as error:  # a server that did not start or failed its warm-up
        print(f"error: {error}", file=sys.stderr)
        return 1
    results = {
        "command": shlex.join([sys.executable, *sys.argv] if argv is None
                              else [sys.executable, __file__, *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine_facts(args, servers), "servers": servers,
        "prompts": {"spec": args.prompts, "count": len(prompts),
                    "ids": [prompt.id for prompt in prompts]},
        "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        "extra_serve_args": args.extra_serve_args,
        "lossless": check_lossless(runs), "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    text = report(results)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    machine = results["machine"]
    plot(runs, f"restdecode serve: {machine['model']} on {machine['backend']}, "
               f"{len(prompts)} prompts, max_tokens {args.max_tokens}", args.out / "serve.png")
    print(text)
    print(f"wrote {args.out}/results.json, report.md, serve.png", file=sys.stderr)
    failed = sum(run["summary"]["failed"] for run in runs)
    return 0 if results["lossless"]["identical"] and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
