"""The one place that chooses restdecode's default drafter (CLI, chat and bench all call it)."""

from __future__ import annotations

from restdecode.drafting.base import ContinuationDrafter, Drafter
from restdecode.drafting.combined import CombinedDrafter
from restdecode.drafting.context import ContextDrafter
from restdecode.drafting.memory import MemoryDrafter
from restdecode.drafting.planner import AcceptanceCalibration, CostModel, PlannedDrafter
from restdecode.drafting.retrieval import RetrievalDrafter, SuffixSearcher

# Nodes per draft tree when no latency profile is given. On 2 CPU cores one verification of
# SmolLM2-135M costs ~1.4x a plain step at 8-16 nodes but ~3x at 64, while merged retrieval +
# context drafting accepts ~2.2-2.35 tokens per step at 8-16 nodes (offline simulation).
DEFAULT_BUDGET = 12

# Nodes of the candidate tree a latency-aware planner chooses from, and tokens per context
# continuation. Most steps keep a few nodes, but when the model repeats itself (code, long
# answers) a confident 30-token chain is worth a width-32 forward: span 32 with 48 candidates
# beat span 10 with 32 by 1.19x on 10 HumanEval problems and 1.04x on 10 MT-Bench questions
# (256 tokens, SmolLM2-135M, 2 cores, same process; bench/RESULTS.md).
CANDIDATE_BUDGET = 48
CONTEXT_SPAN = 32

# Weight of the context (or memory) source against the datastore's in the merged tree (each
# source's weights sum to its weight). What the model itself wrote (this prompt, its answer so
# far, its earlier answers) predicts its next tokens better than a generic corpus: replayed on the
# recorded greedy outputs (bench/draft_quality.py, 2026-11-25), weight 3 over 1 gave +1.8% tokens
# per forward on MT-Bench and +3.4% on HumanEval at 3.5 nodes per step with the memory (+2-3%
# without), and 10 was worse than 3.
CONTEXT_WEIGHT = 3.0

# Shortest context suffix after which the context (or memory) source drafts: one token, as
# SuffixDecoding does (the datastore keeps REST's two). Together with the planner grouping its
# calibration by the context source's own match length (CombinedDrafter's match_from), replayed on the
# recorded greedy outputs (bench/draft_quality.py, 2026-11-26): +2-8% tokens per forward at 2-16
# nodes per step over a two-token minimum grouped by the longest match of all sources.
CONTEXT_MIN_SUFFIX = 1

# Weight of trained draft heads against the datastore's (not tuned yet: the planner's
# calibration learns what their nodes are worth).
HEADS_WEIGHT = 1.0

# Depths a trained draft chain drafts when merged with retrieval and context (alone it drafts
# ChainDrafter's default of 3). Merged, retrieval + context already proposed 96-100% of the
# accepted tokens past the first (bench/source_depth.py), while the later depths cost most of
# the chain's drafting: one depth kept the tokens per forward and measured 1-5% faster than
# three on SmolLM2 (bench/RESULTS.md, issue 17, sixth session).
MERGED_CHAIN_DEPTHS = 1

# Per-step work besides the verification forward (search, tree, acceptance, commit), seconds;
# measured at 1-2 ms for SmolLM2 on 2 cores (GenerationStats.time_draft + time_accept_commit).
STEP_OVERHEAD_S = 0.0015


def default_drafter(
    datastore: SuffixSearcher | None,
    *,
    profile: CostModel | None = None,
    memory: MemoryDrafter | None = None,
    budget: int | None = None,
    learned: ContinuationDrafter | None = None,
    calibration: AcceptanceCalibration | None = None,
    heads: Drafter | None = None,
) -> Drafter:
    """restdecode's default drafter: datastore retrieval merged with context lookup, the
    context weighing ``CONTEXT_WEIGHT`` times the datastore and drafting after suffixes of
    ``CONTEXT_MIN_SUFFIX`` tokens and up; the merged tree carries the context source's match
    length (``CombinedDrafter(match_from=...)``: the planner calibrates by it).

    * ``profile`` (a :class:`restdecode.latency.LatencyProfile`, see
      :func:`restdecode.latency.profile_for`): each step verifies the part of a
      ``CANDIDATE_BUDGET``-node candidate tree with the most expected tokens per predicted second,
      down to a plain step (:class:`PlannedDrafter`). Without one, or with an explicit ``budget``,
      a fixed tree of ``budget`` (default ``DEFAULT_BUDGET``) nodes.
    * ``memory``: a :class:`MemoryDrafter` used as the context source, so that earlier outputs
      are searched too (:func:`default_memory`); the caller keeps it to ``forget()`` when it
      wants.
    * ``datastore`` None: context (and memory) lookup alone.
    * ``learned``: one more source weighing ``CONTEXT_WEIGHT``, e.g. the server's learned memory
      of a tenant (:meth:`restdecode.server.memory.LearnedMemory.drafter`).
    * ``calibration``: the planner's acceptance calibration, to share among the drafters of one
      model (default: a fresh one, learning from zero).
    * ``heads``: trained draft heads (:class:`~restdecode.drafting.heads.HeadsDrafter`) or a
      draft chain (:class:`~restdecode.drafting.chain.ChainDrafter`), one more source weighing
      ``HEADS_WEIGHT``.
    """
    context = (memory if memory is not None
               else ContextDrafter(span=CONTEXT_SPAN, min_suffix=CONTEXT_MIN_SUFFIX))
    sources = [(context, CONTEXT_WEIGHT)]
    if datastore is not None:
        sources.insert(0, (RetrievalDrafter(datastore), 1.0))
    if learned is not None:
        sources.append((learned, CONTEXT_WEIGHT))
    if heads is not None:
        sources.append((heads, HEADS_WEIGHT))
    if profile is None or budget is not None:
        return _merged(sources, DEFAULT_BUDGET if budget is None else budget, context)
    return PlannedDrafter(_merged(sources, CANDIDATE_BUDGET, context), profile,
                          overhead=STEP_OVERHEAD_S, calibration=calibration)


def default_memory() -> MemoryDrafter:
    """An empty output memory, shaped to be :func:`default_drafter`'s context source."""
    return MemoryDrafter(span=CONTEXT_SPAN, min_suffix=CONTEXT_MIN_SUFFIX)


def _merged(sources: list[tuple[Drafter, float]], budget: int,
            context: ContinuationDrafter):
    """One source alone, or the sources merged with their weights, each under ``budget``, the
    tree carrying ``context``'s match length."""
    for source, _ in sources:  # each proposes as many nodes as the merged tree may keep
        source.budget = budget
    if len(sources) == 1:
        return sources[0][0]
    drafters = [source for source, _ in sources]
    return CombinedDrafter(drafters, budget=budget, weights=[weight for _, weight in sources],
                           match_from=drafters.index(context))
