"""A token-conditioned draft chain (issue 17, Hydra / EAGLE style): draft heads that see the
tokens they draft after.

Medusa heads (:mod:`restdecode.drafting.heads`) guess the token two places ahead from the hidden
state that chose the pending token, without knowing which token that was. The pending token is
known before drafting starts (it is the last step's bonus token), so the chain reads it: from
the model's final hidden state ``h`` and the pending token ``y``,

    s_1 = h + SiLU(W_1 [h ; E(y)] + b_1)        logits_1 = s_1 . output rows

and each further depth folds in the token drafted at the one before,
``s_{d+1} = s_d + SiLU(W_{d+1} [s_d ; E(x_d)] + b_{d+1})``. ``E`` is the model's own input
embedding and the output rows are its output embedding restricted to a reduced vocabulary, as
for the heads. A depth is one small matrix product, no attention and no KV cache, so a branch
of the tree costs only its rows.

:class:`ChainDrafter` grows the tree EAGLE-2 style: at each depth it expands the ``beam`` most
probable paths so far (one batched product for all of them), each into its ``top_k`` next
tokens, stops where no path is likely enough to be worth another depth, and keeps the
``budget`` most probable nodes, each scored by its conditional probability.

Trained by ``restdecode train-drafter --kind chain`` (:mod:`restdecode.training.chain`) and
saved as draft heads are (``head.safetensors`` + ``drafter.json``, kind ``chain``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restdecode.drafting.base import StepFeedback
from restdecode.drafting.heads import VocabularyProjection, load_over_vocabulary
from restdecode.drafting.tree import DraftTree

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CHAIN = "chain"
DEFAULT_DEPTHS = 4


class DraftChain(VocabularyProjection):
    """``depths`` residual steps over a hidden state and the tokens drafted after it (module
    docstring), each projected on the rows ``vocab_ids`` of the model's output embedding."""

    def __init__(self, output_embedding: torch.Tensor, input_embedding: torch.Tensor,
                 vocab_ids: torch.Tensor, depths: int = DEFAULT_DEPTHS) -> None:
        super().__init__(output_embedding, vocab_ids)
        if depths < 1:
            raise ValueError(f"depths must be >= 1, got {depths}")
        hidden_size = int(output_embedding.shape[1])
        self.weight = nn.Parameter(torch.zeros(depths, hidden_size, 2 * hidden_size))
        self.bias = nn.Parameter(torch.zeros(depths, hidden_size))
        # The model's input embedding, never saved: its tensor itself, no copy of a vocabulary.
        self.register_buffer("input_rows", input_embedding.detach(), persistent=False)

    @property
    def depths(self) -> int:
        return int(self.weight.shape[0])

    @property
    def heads(self) -> int:  # the shape field drafter.json shares with draft heads
        return self.depths

    @classmethod
    def for_model(cls, model: "PreTrainedModel", vocab_ids: torch.Tensor,
                  depths: int = DEFAULT_DEPTHS) -> "DraftChain":
        """An untrained chain over ``model``'s embeddings (its device and dtype)."""
        output = model.get_output_embeddings().weight
        chain = cls(output, model.get_input_embeddings().weight, vocab_ids.to(output.device),
                    depths)
        return chain.to(output.dtype)

    def step(self, states: torch.Tensor, tokens: torch.Tensor, depth: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth ``depth`` (0-based) for ``states`` (..., H) that read ``tokens`` (...): the new
        states and their logits over the vocabulary (..., N)."""
        embedded = self.input_rows[tokens.to(self.input_rows.device)].to(states.dtype)
        mixed = torch.cat([states, embedded], dim=-1) @ self.weight[depth].T + self.bias[depth]
        states = states + F.silu(mixed)
        return states, self.project(states)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(..., depths, N)``: ``hidden`` (..., H) the state that chose
        token ``tokens[..., 0]``, and ``tokens`` (..., depths) the tokens each depth reads."""
        states, logits = hidden, []
        for depth in range(self.depths):
            states, depth_logits = self.step(states, tokens[..., depth], depth)
            logits.append(depth_logits)
        return torch.stack(logits, dim=-2)


def load_chain(model: "PreTrainedModel", directory: str | os.PathLike
               ) -> tuple[DraftChain, dict[str, Any]]:
    """The draft chain trained for ``model`` in ``directory`` (its device and dtype), and its
    facts; ModelError when it was trained on another model, or is damaged."""
    return load_over_vocabulary(model, directory, CHAIN, DraftChain, "a draft chain")


class ChainDrafter:
    """Drafts from a :class:`DraftChain` over the hidden state the last step handed over and
    the pending token (module docstring): at each depth the ``beam`` most probable paths grow
    into their ``top_k`` next tokens, while one of them is at least ``min_probability``
    likely, down to ``depths`` (None: all of the chain's); the ``budget`` most probable nodes
    are kept. Without a hidden state it drafts nothing.

    The defaults (a floor of 0.1, 3 depths) measured best on SmolLM2 (bench/RESULTS.md): the
    chain's fourth depth was accepted at under 1% of steps, and growing paths below 10% cost
    about 6 ms a step for nodes the planner seldom verified."""

    reads_hidden_states = True
    weighs_probabilities = True  # merged as they are (combined.weighs_probabilities)

    def __init__(self, chain: DraftChain, *, budget: int = 16, top_k: int = 4, beam: int = 4,
                 min_probability: float = 0.1, depths: int | None = 3) -> None:
        if budget < 0 or top_k < 1 or beam < 1 or (depths is not None and depths < 1):
            raise ValueError(f"budget must be >= 0, top_k, beam and depths >= 1, got {budget}, "
                             f"{top_k}, {beam} and {depths}")
        self.chain = chain.eval()
        self.depths = chain.depths if depths is None else min(depths, chain.depths)
        self.budget = budget
        self.top_k = top_k
        self.beam = beam
        self.min_probability = min_probability
        self._hidden: torch.Tensor | None = None

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """The most probable ``budget`` nodes of the chain's tree after the pending token."""
        if self._hidden is None or self.budget == 0 or not len(token_ids):
            return DraftTree.empty()
        chain = self.chain
        tokens, parents, scores, paths = [], [], [], []
        with torch.inference_mode():
            states = self._hidden.reshape(1, -1).to(chain.weight.device, chain.weight.dtype)
            reads = torch.tensor([int(token_ids[-1])])
            expanding = [-1]  # the nodes whose children this depth drafts (-1: the root)
            for depth in range(self.depths):
                states, logits = chain.step(states, reads, depth)
                top = torch.softmax(logits.float(), dim=-1).topk(
                    min(self.top_k, logits.shape[-1]), dim=-1)
                candidates = chain.vocab_ids[top.indices].cpu().numpy()
                probabilities = top.values.cpu().numpy()
                born = []
                for row, parent in enumerate(expanding):
                    above = paths[parent] if parent >= 0 else 1.0
                    for choice in range(candidates.shape[1]):
                        born.append((len(tokens), row))
                        tokens.append(int(candidates[row, choice]))
                        parents.append(parent)
                        scores.append(min(1.0, float(probabilities[row, choice])))
                        paths.append(above * scores[-1])
                if depth + 1 == self.depths:
                    break
                best = sorted(born, key=lambda b: -paths[b[0]])[:self.beam]
                best = [b for b in best if paths[b[0]] >= self.min_probability]
                if not best:
                    break
                expanding = [node for node, _ in best]
                states = states[[row for _, row in best]]
                reads = torch.tensor([tokens[node] for node in expanding])
        return _most_probable(tokens, parents, scores, paths, self.budget)

    def observe(self, feedback: StepFeedback) -> None:
        """Keep the hidden state that chose the pending token."""
        self._hidden = feedback.hidden

    def reset(self) -> None:
        self._hidden = None


def _most_probable(tokens: list[int], parents: list[int], scores: list[float],
                   paths: list[float], budget: int) -> DraftTree:
    """The ``budget`` nodes of highest path probability (ties: the earlier born), renumbered
    in that order. A child's path is never more probable than its parent's, and a parent is
    born first, so the kept set is prefix-closed and parents come before children."""
    order = sorted(range(len(tokens)), key=lambda node: (-paths[node], node))[:budget]
    index = {node: new for new, node in enumerate(order)}
    return DraftTree(np.array([tokens[n] for n in order], dtype=np.int64),
                     np.array([index[parents[n]] if parents[n] >= 0 else -1 for n in order],
                              dtype=np.int64),
                     np.array([scores[n] for n in order]))
