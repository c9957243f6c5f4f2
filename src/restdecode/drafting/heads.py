"""Draft heads (issue 17, Medusa-1 style): K small heads on the model's last hidden state that
guess the tokens 2 .. K+1 positions ahead.

After a step, the loop hands the drafter the model's final hidden state (after its last norm) at
the position whose logits chose the bonus token (``StepFeedback.hidden``): the state that gave
the pending token. Head k reads it and guesses the token k places after the pending one, i.e.
the draft tree's depth k. A head is a residual block ``x + SiLU(W_k x + b_k)`` (zero-initialised:
an untrained head repeats the model's next-token guess) followed by the model's own output
embedding, restricted to a reduced vocabulary (the corpus's most frequent tokens): on a CPU, the
full vocabulary's projection would cost a fifth of a forward of SmolLM2 per head.

:class:`HeadsDrafter` turns the heads' distributions into a tree: the paths of the heads' top
candidates, kept best first by the product of their probabilities (the heads are independent
guesses), each node scored by its own head's probability, which the planner calibrates. Its cost
is one small matrix product per step, not a forward: no KV cache, no session.

Trained by ``restdecode train-drafter --kind heads`` (:mod:`restdecode.training.drafters`) and
saved like an exit head: ``head.safetensors`` + ``drafter.json`` with the base model's
fingerprint.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restdecode.drafting.base import StepFeedback
from restdecode.drafting.tree import DraftTree
from restdecode.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from restdecode.drafting.chain import ChainDrafter, DraftChain

HEADS = "heads"
DEFAULT_HEADS = 3
DEFAULT_VOCABULARY = 8192


class VocabularyProjection(nn.Module):
    """The base of draft heads and the draft chain: the rows ``vocab_ids`` (saved) of the model's
    output embedding (``output_rows``, derived again at load time, never saved), and
    :meth:`project`, states onto them."""

    def __init__(self, output_embedding: torch.Tensor, vocab_ids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("vocab_ids", torch.as_tensor(vocab_ids, dtype=torch.long).clone())
        self.register_buffer("output_rows", output_embedding[self.vocab_ids].detach().clone(),
                             persistent=False)

    def refresh_output_rows(self, output_embedding: torch.Tensor) -> None:
        """Take the output embedding's rows of ``vocab_ids`` again (after loading them)."""
        self.output_rows = output_embedding[self.vocab_ids.to(output_embedding.device)].detach(
        ).clone().to(self.output_rows.dtype)

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., N)`` of ``states`` ``(..., H)`` over the vocabulary."""
        if states.dim() == 2 and states.shape[0] in (2, 3):
            # MKL's sgemm takes 2-3x longer for 2 or 3 rows than for 4 on a CPU
            # (bench/RESULTS.md), so 2 or 3 rows (one decoding step's) are padded to 4.
            padded = F.pad(states, (0, 0, 0, 4 - states.shape[0]))
            return (padded @ self.output_rows.T)[:states.shape[0]]
        return states @ self.output_rows.T


class DraftHeads(VocabularyProjection):
    """``heads`` residual blocks over a hidden state, each projected on the rows ``vocab_ids`` of
    the model's output embedding: ``forward(hidden (..., H)) -> logits (..., heads, N)``."""

    def __init__(self, output_embedding: torch.Tensor, vocab_ids: torch.Tensor,
                 heads: int = DEFAULT_HEADS) -> None:
        super().__init__(output_embedding, vocab_ids)
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        hidden_size = int(output_embedding.shape[1])
        self.weight = nn.Parameter(torch.zeros(heads, hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(heads, hidden_size))

    @property
    def heads(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def for_model(cls, model: "PreTrainedModel", vocab_ids: torch.Tensor,
                  heads: int = DEFAULT_HEADS) -> "DraftHeads":
        """Untrained heads over ``model``'s output embedding (its device and dtype)."""
        embedding = model.get_output_embeddings().weight
        return cls(embedding, vocab_ids.to(embedding.device), heads).to(embedding.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("...h,kgh->...kg", hidden, self.weight) + self.bias
        return self.project(hidden.unsqueeze(-2) + F.silu(mixed))


def load_heads(model: "PreTrainedModel", directory: str | os.PathLike
               ) -> tuple[DraftHeads, dict[str, Any]]:
    """The draft heads trained for ``model`` in ``directory`` (its device and dtype), and their
    facts; ModelError when they were trained on another model, or are damaged."""
    return load_over_vocabulary(model, directory, HEADS, DraftHeads, "draft heads")


def load_over_vocabulary(model: "PreTrainedModel", directory: str | os.PathLike, kind: str,
                         module_class: type, what: str) -> tuple[Any, dict[str, Any]]:
    """The ``module_class`` (heads or chain: built by ``for_model(model, vocab_ids, heads)``)
    of ``kind`` trained for ``model`` in ``directory``, and its facts; ModelError when it is
    another kind (``what`` names this one), was trained on another model, or is damaged."""
    from restdecode.drafting.early_exit import check_base_model, load_weights, read_drafter_config

    facts = read_drafter_config(directory)
    if facts["kind"] != kind:
        raise ModelError(f"{directory} holds an {facts['kind']} drafter, not {what}")
    check_base_model(model, directory, facts)
    vocabulary = facts.get("vocabulary")
    if not isinstance(vocabulary, int) or vocabulary < 1:
        raise ModelError(f"{directory}: drafter.json gives no vocabulary size")
    module = module_class.for_model(model, torch.zeros(vocabulary, dtype=torch.long),
                                    facts["heads"])
    load_weights(module, directory)
    module.refresh_output_rows(model.get_output_embeddings().weight)
    return module, facts


def load_hidden_drafter(model: "PreTrainedModel", directory: str | os.PathLike
                        ) -> "DraftHeads | DraftChain":
    """The draft heads or draft chain (:mod:`restdecode.drafting.chain`) trained for ``model``
    in ``directory``: the drafters that read the model's hidden state."""
    from restdecode.drafting.chain import CHAIN, load_chain
    from restdecode.drafting.early_exit import read_drafter_config

    if read_drafter_config(directory)["kind"] == CHAIN:
        return load_chain(model, directory)[0]
    return load_heads(model, directory)[0]


def hidden_drafter(module: "DraftHeads | DraftChain", *, budget: int = 16,
                   chain_depths: int | None = None) -> "HeadsDrafter | ChainDrafter":
    """The drafter of trained heads or of a trained chain, drafting at most ``budget`` nodes;
    a chain drafts ``chain_depths`` depths (None: :class:`ChainDrafter`'s default)."""
    from restdecode.drafting.chain import ChainDrafter, DraftChain

    if isinstance(module, DraftChain):
        if chain_depths is None:
            return ChainDrafter(module, budget=budget)
        return ChainDrafter(module, budget=budget, depths=chain_depths)
    return HeadsDrafter(module, budget=budget)


def frequent_tokens(windows: Sequence[Sequence[int]], vocab_size: int, size: int) -> torch.Tensor:
    """The ``size`` most frequent token ids in ``windows`` (ties: lower id first), ascending; all
    of them when ``size`` >= ``vocab_size``."""
    if size >= vocab_size:
        return torch.arange(vocab_size)
    counts = np.bincount(np.concatenate([np.asarray(w, dtype=np.int64) for w in windows]),
                         minlength=vocab_size)[:vocab_size]
    order = np.lexsort((np.arange(vocab_size), -counts))[:size]
    return torch.as_tensor(np.sort(order))


class HeadsDrafter:
    """Drafts from :class:`DraftHeads` over the hidden state the last step handed over (module
    docstring): at most ``budget`` nodes from each head's ``top_k`` candidates. Without a hidden
    state (a backend that gives none) it drafts nothing."""

    reads_hidden_states = True

    def __init__(self, heads: DraftHeads, *, budget: int = 16, top_k: int = 4) -> None:
        if budget < 0 or top_k < 1:
            raise ValueError(f"budget must be >= 0 and top_k >= 1, got {budget} and {top_k}")
        self.heads = heads.eval()
        self.budget = budget
        self.top_k = top_k
        self._hidden: torch.Tensor | None = None

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """The best ``budget`` paths of the heads' candidates (tokens after the pending one)."""
        if self._hidden is None or self.budget == 0:
            return DraftTree.empty()
        with torch.inference_mode():
            weights = self.heads.weight
            probabilities = torch.softmax(
                self.heads(self._hidden.to(weights.device, weights.dtype)).float(), dim=-1)
            top = probabilities.topk(min(self.top_k, probabilities.shape[-1]), dim=-1)
            tokens = self.heads.vocab_ids[top.indices].cpu().numpy()
        return best_paths(top.values.cpu().numpy(), tokens, self.budget)

    def observe(self, feedback: StepFeedback) -> None:
        """Keep the hidden state that chose the pending token."""
        self._hidden = feedback.hidden

    def reset(self) -> None:
        self._hidden = None


def best_paths(probabilities: np.ndarray, tokens: np.ndarray, budget: int) -> DraftTree:
    """The tree of the ``budget`` most probable paths through the candidates of each depth
    (``probabilities``/``tokens``: ``(depths, k)``), a path's probability the product of its
    nodes' (each node scored by its own); found best first, so parents come before children and
    the kept set is prefix-closed."""
    depths, width = probabilities.shape
    node_tokens, parents, scores = [], [], []
    frontier = [(-float(probabilities[0, i]), 0, i, -1) for i in range(width)]
    heapq.heapify(frontier)
    while frontier and len(node_tokens) < budget:
        negative, depth, choice, parent = heapq.heappop(frontier)
        node = len(node_tokens)
        node_tokens.append(int(tokens[depth, choice]))
        parents.append(parent)
        scores.append(float(probabilities[depth, choice]))
        if depth + 1 < depths:
            for i in range(width):
                heapq.heappush(frontier, (negative * float(probabilities[depth + 1, i]),
                                          depth + 1, i, node))
    return DraftTree(np.array(node_tokens, dtype=np.int64), np.array(parents, dtype=np.int64),
                     np.array(scores))
