"""Training a draft chain by self-distillation (``restdecode train-drafter --kind chain``).

As for draft heads (:mod:`restdecode.training.heads`), each step runs the frozen model once over
a batch of windows. At position t the chain's input is the model's final hidden state there
and the window's tokens t + 1 .. t + K (teacher forcing: depth d reads the token before the one
it guesses), and depth d's target is the model's own distribution at position t + d, over the
chain's vocabulary. On self-generated text (``--self-generate``) the window's tokens are the
model's own greedy choices, which is what the chain reads when its drafts are accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from restdecode.drafting.chain import CHAIN, DraftChain, load_chain
from restdecode.training.early_exit import TrainingReport, TrainingSettings, train_drafter
from restdecode.training.heads import HeadsRecipe

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ChainRecipe(HeadsRecipe):
    """What :func:`train_drafter` needs to train a chain of ``depths`` over the ``vocabulary``
    most frequent tokens of the first training windows (the heads' recipe, whose inputs also
    carry the tokens each depth reads)."""

    kind = CHAIN
    module = DraftChain
    loader = staticmethod(load_chain)

    def pairs(self, model: "PreTrainedModel", batch: torch.Tensor):
        """Teacher log-probabilities ``(B, T - K, K, N)`` and the student's input: the hidden
        states ``(B, T - K, H)`` and the tokens each depth reads ``(B, T - K, K)``."""
        teacher, hidden = super().pairs(model, batch)
        span = hidden.shape[1]
        reads = torch.stack([batch[:, d:d + span] for d in range(1, self.heads + 1)], dim=2)
        return teacher, (hidden, reads.to(hidden.device))

    def student(self, model: "PreTrainedModel", chain: DraftChain, inputs) -> torch.Tensor:
        hidden, reads = inputs
        return F.log_softmax(chain(hidden.float(), reads), dim=-1)


def train_chain(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                documents: Iterable[str], out: str | Path, settings: TrainingSettings, *,
                resume: bool = False, base_name: str = "", data_name: str = "",
                progress: bool = True,
                on_step: Callable[[int], None] | None = None) -> TrainingReport:
    """Train a draft chain of ``settings.heads`` depths for ``model`` on ``documents`` and save
    it into ``out`` (module docstring)."""
    return train_drafter(model, tokenizer, documents, out, settings,
                         ChainRecipe(model, settings.heads, settings.vocabulary), resume=resume,
                         base_name=base_name, data_name=data_name, progress=progress,
                         on_step=on_step)
