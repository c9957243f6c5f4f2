"""Training draft heads by self-distillation (``restdecode train-drafter --kind heads``).

Each step runs the frozen model once over a batch of corpus windows: its final hidden state at
position t (after the last norm) is the heads' input, and its own next-token distribution at
position t + k (the token t + k + 1, over the heads' vocabulary) is head k's target, so head k
learns to guess what the model will say k tokens after the one it is about to say. The loop,
checkpoints and held-out split are :func:`~restdecode.training.early_exit.train_drafter`'s; the
top-1 agreement it reports is averaged over the heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from restdecode.drafting.heads import HEADS, DraftHeads, frequent_tokens, load_heads
from restdecode.errors import ModelError
from restdecode.training.early_exit import TrainingReport, TrainingSettings, train_drafter

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class HeadsRecipe:
    """What :func:`train_drafter` needs to train ``heads`` draft heads over the ``vocabulary``
    most frequent tokens of the first training windows."""

    kind = HEADS
    module = DraftHeads
    loader = staticmethod(load_heads)

    def __init__(self, model: "PreTrainedModel", heads: int, vocabulary: int) -> None:
        if heads < 1 or vocabulary < 2:
            raise ModelError(f"--heads must be >= 1 and --vocabulary >= 2, got {heads} and "
                             f"{vocabulary}")
        self.heads = heads
        self.vocabulary = min(vocabulary, model.get_output_embeddings().weight.shape[0])
        self.vocab_ids: torch.Tensor | None = None  # the heads' tokens: the teacher's too

    def new_head(self, model: "PreTrainedModel", sample: list[list[int]]) -> DraftHeads:
        size = model.get_output_embeddings().weight.shape[0]
        if not sample:
            raise ModelError("not enough text to choose the heads' vocabulary from")
        if self.vocab_ids is None:
            self.vocab_ids = frequent_tokens(sample, size, self.vocabulary)
        return self.module.for_model(model, self.vocab_ids, self.heads)

    def pairs(self, model: "PreTrainedModel", batch: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher log-probabilities ``(B, T - K, K, N)`` (head k at position t: the model's
        distribution at t + k over the vocabulary) and the student's input: the hidden states
        ``(B, T - K, H)``."""
        heads = self.heads
        if batch.shape[1] <= heads:
            raise ModelError(f"training windows must be longer than --heads ({heads})")
        with torch.no_grad():
            output = model(input_ids=batch.to(model.device), output_hidden_states=True,
                           use_cache=False)
        span = batch.shape[1] - heads
        vocab = self.vocab_ids.to(output.logits.device)
        targets = torch.stack([output.logits[:, k:k + span, vocab] for k in range(1, heads + 1)],
                              dim=2)
        return (F.log_softmax(targets.float(), dim=-1),
                output.hidden_states[-1][:, :span].detach())

    def student(self, model: "PreTrainedModel", head: DraftHeads, hidden: torch.Tensor
                ) -> torch.Tensor:
        return F.log_softmax(head(hidden.float()), dim=-1)

    def facts(self) -> dict:
        return {"kind": self.kind, "heads": self.heads, "vocabulary": self.vocabulary}

    def load(self, model: "PreTrainedModel", out: Path, head: DraftHeads) -> None:
        """The checkpoint in ``out`` into ``head`` (same model and shape, or ModelError)."""
        saved, facts = self.loader(model, out)
        if (facts["heads"], facts["vocabulary"]) != (self.heads, self.vocabulary):
            raise ModelError(f"{out} holds {self.kind} of {facts['heads']} over "
                             f"{facts['vocabulary']} tokens; resume with --heads {facts['heads']} --vocabulary "
                             f"{facts['vocabulary']}")
        head.load_state_dict(saved.float().state_dict())
        head.refresh_output_rows(model.get_output_embeddings().weight)
        self.vocab_ids = head.vocab_ids.cpu()


def train_heads(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                documents: Iterable[str], out: str | Path, settings: TrainingSettings, *,
                resume: bool = False, base_name: str = "", data_name: str = "",
                progress: bool = True,
                on_step: Callable[[int], None] | None = None) -> TrainingReport:
    """Train ``settings.heads`` draft heads of ``model`` on ``documents`` and save them into
    ``out`` (module docstring)."""
    return train_drafter(model, tokenizer, documents, out, settings,
                         HeadsRecipe(model, settings.heads, settings.vocabulary), resume=resume,
                         base_name=base_name, data_name=data_name, progress=progress,
                         on_step=on_step)
