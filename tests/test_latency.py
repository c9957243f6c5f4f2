"""Latency profiles: interpolation, JSON round trip, the per-model/machine cache, and one real
(tiny) measurement checked for shape only: no timing assertions."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from restdecode import latency
from restdecode.latency import (LatencyProfile, batch_profile_for, measure_batch_profile,
                                measure_profile, profile_for, profile_path)

REAL_PROFILES_DIR = latency.profiles_dir  # before conftest redirects it for every test

SMALL_GRID = dict(widths=(1, 2, 5), cache_lengths=(3, 20), repeats=1)


def tiny_llama(*, vocab_size: int = 64, max_positions: int = 256):
    """A 2-layer random Llama (GQA). Built here rather than imported from ``conftest``: two
    ``conftest`` modules (tests/, tests/drafting/) make that import ambiguous in a full run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=max_positions)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                         dtype=torch.float32).eval()


@functools.lru_cache(maxsize=None)
def llama():
    return tiny_llama()


def grid_profile(**key) -> LatencyProfile:
    # Row for cache 100: 1 s at width 1, 3 s at width 3; cache 300: 2 s and 6 s.
    return LatencyProfile((1, 3), (100, 300), np.array([[1.0, 3.0], [2.0, 6.0]]), key)


def test_predict_interpolates_in_width_and_cache_length():
    profile = grid_profile()
    assert profile.predict(2, 100) == pytest.approx(2.0)
    assert profile.predict(1, 200) == pytest.approx(1.5)
    assert profile.predict(2, 200) == pytest.approx(3.0)


def test_predict_extrapolates_upwards_and_clamps_below():
    profile = grid_profile()
    assert profile.predict(5, 100) == pytest.approx(5.0)  # slope of the last segment
    assert profile.predict(0.5, 100) == pytest.approx(1.0)
    assert profile.predict(1, 50) == pytest.approx(1.0)
    assert profile.predict(1, 500) == pytest.approx(3.0)  # along the cache-length segment


def test_predict_never_extrapolates_downwards():
    noisy = LatencyProfile((1, 2), (100, 200), np.array([[2.0, 1.5], [1.8, 1.0]]))
    assert noisy.predict(10, 100) == pytest.approx(1.5)
    assert noisy.predict(2, 1000) == pytest.approx(1.0)


def test_predict_takes_arrays():
    predicted = grid_profile().predict(np.array([1, 2, 3]), 100)
    assert isinstance(predicted, np.ndarray)
    assert predicted == pytest.approx([1.0, 2.0, 3.0])


@pytest.mark.parametrize("widths, cache_lengths, seconds", [
    ((2, 1), (100,), [[1.0, 1.0]]),
    ((0, 1), (100,), [[1.0, 1.0]]),
    ((1, 2), (200, 100), [[1.0, 1.0], [1.0, 1.0]]),
    ((1, 2), (100,), [[1.0, 0.0]]),
    ((1, 2), (100,), [[1.0, float("nan")]]),
])
def test_invalid_profiles_are_refused(widths, cache_lengths, seconds):
    with pytest.raises(ValueError):
        LatencyProfile(widths, cache_lengths, np.array(seconds))


def test_json_round_trip(tmp_path):
    profile = grid_profile(model="m", torch_threads=2)
    loaded = LatencyProfile.load(profile.save(tmp_path / "sub" / "p.json"))
    assert loaded.widths == profile.widths and loaded.cache_lengths == profile.cache_lengths
    assert np.array_equal(loaded.seconds, profile.seconds)
    assert loaded.key == profile.key


def test_measure_profile_is_well_formed():
    model = llama()
    profile = measure_profile(model, widths=(5, 1, 2), cache_lengths=(20, 3), repeats=1,
                              progress=False)
    assert profile.widths == (1, 2, 5) and profile.cache_lengths == (3, 20)
    assert profile.seconds.shape == (2, 3)
    assert np.all(np.isfinite(profile.seconds)) and np.all(profile.seconds > 0)
    assert profile.key == latency.profile_key(model)
    assert profile.key["torch_threads"] == torch.get_num_threads()


def test_measure_batch_profile_is_well_formed_and_leaves_no_trace(monkeypatch):
    """Every width and cache length is timed through the batch session's own verify; the rows'
    caches hold exactly their prompts again after every step (each step committed empty)."""
    from restdecode.backends.transformers_batch import TransformersBatchSession

    sessions = []
    real_init = TransformersBatchSession.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        sessions.append(self)

    monkeypatch.setattr(TransformersBatchSession, "__init__", recording_init)
    model = llama()
    profile = measure_batch_profile(model, nodes=(8, 0, 3), cache_lengths=(40, 8), rows=(4, 1),
                                    repeats=1, progress=False)
    assert profile.rows == (1, 4)
    assert profile.by_rows[4].widths == (4, 7, 12) and profile.by_rows[1].widths == (1, 4, 9)
    assert profile.by_rows[4].cache_lengths == (8, 40) and profile.by_rows[1].cache_lengths == (8, 40)
    assert all(p.seconds.shape == (2, 3) and np.all(p.seconds > 0) for p in profile.by_rows.values())
    # Keyed by the transformers batch layout: a profile of the old packed layout is not reused.
    assert profile.key == latency.profile_key(model) | {"layout": "batch-regions-4"}
    assert [s.cache_length for s in sessions] == [8, 40, 8, 40]
    assert [[s.past_length(r) for r in s.rows] for s in sessions] == [[8], [40], [2] * 4, [10] * 4]


def test_batch_profiles_are_cached_apart_from_single_sequence_ones(tmp_path):
    grid = dict(nodes=(0, 2), cache_lengths=(8,), rows=(1, 2), repeats=1)
    batch = batch_profile_for(llama(), cache_dir=tmp_path, progress=False, **grid)
    single = profile_for(llama(), cache_dir=tmp_path, progress=False, **SMALL_GRID)
    assert len(list(tmp_path.glob("*.json"))) == 2 and batch.key != single.key
    again = batch_profile_for(llama(), cache_dir=tmp_path, progress=False, **grid)
    assert all(np.array_equal(again.by_rows[r].seconds, batch.by_rows[r].seconds)
               for r in (1, 2))  # read back, not measured again
    other = batch_profile_for(llama(), cache_dir=tmp_path, progress=False, **grid | {"rows": (2,)})
    assert other.rows == (2,)  # another grid is measured, not the cached one reused


def test_the_batch_grid_is_cut_to_the_models_context(tmp_path):
    model = tiny_llama(max_positions=64)  # 256 cached + 4 rows + 32 nodes cannot fit
    profile = batch_profile_for(model, cache_dir=tmp_path, progress=False, repeats=1,
                                rows=(1, 4), nodes=(0, 8, 32, 64), cache_lengths=(16, 256))
    assert profile.grid()["nodes"] == (0, 8) and profile.cache_lengths == (16,)
    assert all(c + 4 + 8 <= 64 for c in profile.by_rows[4].cache_lengths)


def rows_profile() -> "latency.BatchLatencyProfile":
    """1 row: 10 ms + 1 ms per node; 4 rows: 20 ms + 3 ms per node (cache-independent)."""
    nodes = np.arange(0, 9)
    def flat(rows, base, per_node):
        return LatencyProfile(tuple(rows + nodes), (0, 100), np.vstack([base + per_node * nodes] * 2))
    return latency.BatchLatencyProfile({4: flat(4, 0.020, 0.003), 1: flat(1, 0.010, 0.001)},
                                       {"model": "m"}, (0, 100))


def test_a_batch_profile_prices_nodes_on_top_of_the_rows_verified():
    profile = rows_profile()
    assert profile.rows == (1, 4)
    assert profile.predict(1 + 2, 50, rows=1) == pytest.approx(0.012)
    assert profile.predict(4 + 2, 50, rows=4) == pytest.approx(0.026)
    # Between measured row counts: both neighbours' prices for the same nodes, blended.
    assert profile.predict(2 + 2, 50, rows=2) == pytest.approx(0.012 + (0.026 - 0.012) / 3)
    # Beyond the most rows: extrapolated along the last two, never below the largest.
    assert profile.predict(7, 50, rows=7) == pytest.approx(0.020 + (0.020 - 0.010))
    costs = profile.for_rows(4).predict(np.array([4, 5, 8]), 50)
    assert costs == pytest.approx([0.020, 0.023, 0.032])


def test_a_batch_profile_survives_json(tmp_path):
    profile = rows_profile()
    again = latency.BatchLatencyProfile.load(profile.save(tmp_path / "batch.json"))
    assert again.key == profile.key and again.grid() == profile.grid()
    assert again.predict(6, 30, rows=3) == pytest.approx(profile.predict(6, 30, rows=3))
    with pytest.raises(ValueError):
        LatencyProfile.load(tmp_path / "batch.json")  # not a single-sequence profile


def test_measure_profile_refuses_widths_beyond_the_context():
    model = llama()  # 256 positions
    with pytest.raises(ValueError, match="positions"):
        measure_profile(model, widths=(1, 64), cache_lengths=(200,), progress=False)


@pytest.fixture
def counted_measurements(monkeypatch):
    """Counts calls of measure_profile made by profile_for (the real measurement still runs)."""
    calls = []
    real = latency.measure_profile

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(latency, "measure_profile", counting)
    return calls


def test_profile_for_measures_once_then_reads_the_cache(tmp_path, counted_measurements):
    first = profile_for(llama(), cache_dir=tmp_path, progress=False, **SMALL_GRID)
    second = profile_for(llama(), cache_dir=tmp_path, progress=False, **SMALL_GRID)
    assert len(counted_measurements) == 1
    assert np.array_equal(first.seconds, second.seconds)
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["key"] == first.key
    profile_for(llama(), cache_dir=tmp_path, refresh=True, progress=False, **SMALL_GRID)
    assert len(counted_measurements) == 2


def test_profile_for_measures_again_on_another_grid_or_a_corrupt_file(tmp_path,
                                                                     counted_measurements):
    profile = profile_for(llama(), cache_dir=tmp_path, progress=False, **SMALL_GRID)
    profile_for(llama(), cache_dir=tmp_path, progress=False, **(SMALL_GRID | {"widths": (1, 3)}))
    assert len(counted_measurements) == 2
    profile_path(profile.key, tmp_path).write_text("{not json")
    profile_for(llama(), cache_dir=tmp_path, progress=False, **SMALL_GRID)
    assert len(counted_measurements) == 3


def test_thread_count_separates_cached_profiles(tmp_path):
    threads = torch.get_num_threads()
    try:
        one = profile_for(llama(), cache_dir=tmp_path, progress=False, **SMALL_GRID)
        torch.set_num_threads(threads + 1)
        other = profile_for(llama(), cache_dir=tmp_path, progress=False, **SMALL_GRID)
    finally:
        torch.set_num_threads(threads)
    assert one.key["torch_threads"] != other.key["torch_threads"]
    assert profile_path(one.key, tmp_path) != profile_path(other.key, tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_model_and_dtype_separate_cached_profiles(tmp_path):
    base = latency.profile_key(llama())
    other_model = latency.profile_key(tiny_llama(vocab_size=65))
    half = latency.profile_key(tiny_llama().to(torch.bfloat16))
    paths = {profile_path(key, tmp_path) for key in (base, other_model, half)}
    assert len(paths) == 3


def test_default_cache_dir_is_under_restdecode_home(tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "profiles_dir", REAL_PROFILES_DIR)  # conftest redirects it
    monkeypatch.setenv("RESTDECODE_HOME", str(tmp_path))
    profile_for(llama(), progress=False, **SMALL_GRID)
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1


def test_the_grid_is_cut_to_the_models_context():
    short = tiny_llama(max_positions=100)
    widths, cache_lengths = latency.fitting_grid(short, latency.DEFAULT_WIDTHS, (128, 512))
    assert max(widths) <= 50 and widths[0] == 1
    assert cache_lengths == (100 - max(widths),)
    assert latency.fitting_grid(short, (1, 2), (3, 20)) == ((1, 2), (3, 20))


def test_profile_for_measures_a_grid_the_model_holds(tmp_path):
    short = tiny_llama(max_positions=40)
    profile = profile_for(short, cache_dir=tmp_path, progress=False, repeats=1)
    assert max(profile.widths) <= 20 and max(profile.cache_lengths) + max(profile.widths) <= 40
    assert profile_for(short, cache_dir=tmp_path, progress=False, repeats=1).seconds.tolist() == \
        profile.seconds.tolist()  # read back from the cache, not measured again
