"""PNG plots of a benchmark run (matplotlib's object API with the Agg canvas: no GUI, no pyplot
global state).

* ``tokens_per_s.png``: tokens/s per method, decode-only and end-to-end side by side;
* ``accepted_per_step.png``: histogram of tokens committed per model forward, per method;
* ``speedup_per_prompt.png``: per prompt (and turn), decode-only speedup vs the run's baseline
  (hf-greedy, or llamacpp-greedy on the llamacpp backend).
"""

from __future__ import annotations

from pathlib import Path

from restdecode.benchmark.report import document_baseline


def write_plots(document: dict, out: Path) -> list[Path]:
    """Write every plot of ``document`` (a results.json dict) into ``out``; return their paths."""
    paths = [_tokens_per_s(document, out / "tokens_per_s.png"),
             _accepted_histogram(document, out / "accepted_per_step.png")]
    baseline = document_baseline(document)
    if baseline is not None and len(document["methods"]) > 1:
        paths.append(_speedup_per_prompt(document, baseline, out / "speedup_per_prompt.png"))
    return paths


def _figure(width: float = 8.0, height: float = 4.5):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _tokens_per_s(document: dict, path: Path) -> Path:
    import numpy as np

    methods = document["methods"]
    figure, axes = _figure()
    x = np.arange(len(methods))
    for offset, timing in ((-0.2, "decode"), (0.2, "e2e")):
        values = [document["summary"][m][timing]["tokens_per_s"] or 0.0 for m in methods]
        bars = axes.bar(x + offset, values, width=0.4, label=f"{timing}")
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks(x, methods, rotation=15, ha="right")  # llamacpp-prompt-lookup is long
    axes.set_ylabel("tokens / s")
    axes.set_title(f"{document['model']['name']} on {document['workload']}: throughput")
    axes.legend()
    figure.savefig(path, dpi=120)
    return path


def _accepted_histogram(document: dict, path: Path) -> Path:
    import numpy as np

    methods = document["methods"]
    per_method = {m: [n for row in document["rows"] if row["method"] == m
                      for n in row["accepted_per_step"]] for m in methods}
    largest = max((max(v) for v in per_method.values() if v), default=1)
    edges = np.arange(0.5, largest + 1.5)
    figure, axes = _figure()
    axes.hist([per_method[m] for m in methods], bins=edges, label=methods, density=True)
    axes.set_xlabel("tokens committed per model forward")
    axes.set_ylabel("share of forwards")
    axes.set_xticks(np.arange(1, largest + 1))
    axes.set_title("accepted tokens per step")
    axes.legend()
    figure.savefig(path, dpi=120)
    return path


def _speedup_per_prompt(document: dict, baseline: str, path: Path) -> Path:
    import numpy as np

    rows = document["rows"]
    keys = list(dict.fromkeys((row["prompt_id"], row["turn"]) for row in rows))
    decode_s = {(row["prompt_id"], row["turn"], row["method"]): row["decode_s"] for row in rows}
    others = [m for m in document["methods"] if m != baseline]
    figure, axes = _figure(width=max(8.0, 0.5 * len(keys) * len(others) ** 0.5))
    x = np.arange(len(keys))
    width = 0.8 / len(others)
    for index, method in enumerate(others):
        values = [decode_s[(p, t, baseline)] / decode_s[(p, t, method)]
                  if decode_s[(p, t, method)] > 0 else 0.0 for p, t in keys]
        axes.bar(x - 0.4 + width * (index + 0.5), values, width=width, label=method)
    axes.axhline(1.0, color="black", linewidth=0.8)
    labels = [p if t == 1 else f"{p} (turn {t})" for p, t in keys]
    axes.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel(f"decode speedup vs {baseline}")
    axes.set_title("per-prompt speedup (decode-only)")
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    return path
