"""An opt-in ``torch.compile``'d model forward for the decode loop's verification steps.

:func:`compile_forward` wraps a model in a :class:`CompiledModel`: every attribute is the
model's, but calling it runs ``torch.compile(model.forward, dynamic=True)``. The engine passes
it wherever it takes a model; its verification forwards then run through Inductor's fused
kernels, while the prefill (once per generation, at any prompt length) runs eagerly through
:func:`eager`, which would otherwise cost one more graph to build. ``restdecode.verify.build_graphs``
builds the graphs up front. This module imports nothing of restdecode's. The wrapped model itself is
not changed: ``model.generate`` (the benchmark's ``hf-*`` baselines) stays eager.

Costs and caveats, measured on SmolLM2-135M, 2 CPU cores (bench/RESULTS.md):

* building the graphs (``verify.build_graphs``: four kinds of forward, C++ kernels generated and
  compiled) took about 7 minutes in every process, so it pays only for long runs: a server, a
  benchmark, a long chat;
* one forward ran 1.2-1.3x faster (widths 1-16, 128 cached tokens), and the decode loop about
  1.2-1.25x faster, drafted or not;
* the compiled forward's logits differ from the eager ones by float rounding (~1e-5), as any two
  kernel choices do; greedy output stays the model's unless two logits tie to that precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

COMPILE_OPTIONS: dict[str, Any] = {"dynamic": True}  # one graph for every width and cache length
# Graphs a decode loop needs: {one slot, several} x {contiguous cache, a view of one} (see
# build_graphs); dynamo's default limit of 8 per function leaves little room beyond that.
RECOMPILE_LIMIT = 16


class CompiledModel:
    """``model`` with a compiled ``__call__``; every other attribute is the model's own."""

    def __init__(self, model: "PreTrainedModel", **options: Any) -> None:
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                                   RECOMPILE_LIMIT)
        self.eager_model = model
        self.compiled_forward = torch.compile(model.forward, **(COMPILE_OPTIONS | options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled_forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the wrapper lacks: config, device, dtype, generation_config ...
        return getattr(self.eager_model, name)

    def __repr__(self) -> str:
        return f"CompiledModel({type(self.eager_model).__name__})"


def compile_forward(model: "PreTrainedModel", **options: Any) -> CompiledModel:
    """``model`` whose forward the decode loop runs compiled (options go to ``torch.compile``)."""
    if isinstance(model, CompiledModel):
        return model
    return CompiledModel(model, **options)


def eager(model: "PreTrainedModel | CompiledModel") -> "PreTrainedModel":
    """The plain model behind ``model`` (``model`` itself when it is not compiled)."""
    return model.eager_model if isinstance(model, CompiledModel) else model


def is_compiled(model: Any) -> bool:
    """Whether ``model`` is a :class:`CompiledModel`."""
    return isinstance(model, CompiledModel)
