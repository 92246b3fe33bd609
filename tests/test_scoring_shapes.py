"""Micro-batches are scored at a bounded set of sizes, so the daemon's memory stays bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detector.core.model import LSTMAutoencoder, ModelSpec
from detector.core.scaling import StandardScaler
from detector.core.scoring import Scorer, ladder_sizes, padded_batch_size


@given(st.integers(min_value=0, max_value=1 << 20))
def test_padded_size_covers_the_batch_with_at_most_an_eighth_padding(count: int) -> None:
    padded = padded_batch_size(count)
    assert count <= padded <= max(count * 9 // 8, 16)
    assert padded_batch_size(padded) == padded


def test_every_size_up_to_1024_maps_onto_64_shapes() -> None:
    assert len(ladder_sizes(1024)) == 64
    assert ladder_sizes(20) == [*range(1, 17), 18, 20]


def _scorer(max_batch_size: int = 1024, threads: int = 1) -> Scorer:
    torch.manual_seed(0)
    model = LSTMAutoencoder(ModelSpec(n_features=3, hidden_size=8, latent_size=2))
    scaler = StandardScaler(mean=np.full(3, 5.0), scale=np.full(3, 2.0))
    return Scorer(model, scaler, "cpu", max_batch_size, threads=threads)


def test_the_model_only_sees_ladder_sizes_and_padding_does_not_change_errors() -> None:
    scorer = _scorer()
    seen: set[int] = set()
    scorer.model.register_forward_pre_hook(lambda _, args: seen.add(len(args[0])))
    windows = np.random.default_rng(0).normal(5.0, 2.0, size=(300, 10, 3)).astype(np.float32)
    together = scorer.sensor_errors(windows)
    for count in range(1, 301):
        np.testing.assert_allclose(
            scorer.sensor_errors(windows[:count]), together[:count], rtol=1e-5, atol=1e-7
        )
    assert seen == {padded_batch_size(count) for count in range(1, 301)}
    assert len(seen) == 50  # instead of one shape per batch size, 300


@pytest.mark.parametrize(("max_batch_size", "threads"), [(200, 1), (200, 2), (20, 2), (50, 3)])
def test_after_warm_up_no_batch_size_meets_a_new_shape(max_batch_size: int, threads: int) -> None:
    scorer = _scorer(max_batch_size, threads)
    seen: set[int] = set()
    scorer.model.register_forward_pre_hook(lambda _, args: seen.add(len(args[0])))
    scorer.warm_up(window_length=4)
    warmed = set(seen)
    for count in range(1, 2 * max_batch_size + 1):
        scorer.sensor_errors(np.zeros((count, 4, 3), np.float32))
    assert seen == warmed


def test_warm_up_with_workers_builds_only_slice_sizes() -> None:
    scorer = _scorer(max_batch_size=200, threads=2)
    seen: set[int] = set()
    scorer.model.register_forward_pre_hook(lambda _, args: seen.add(len(args[0])))
    scorer.warm_up(window_length=4)
    assert seen == set(ladder_sizes(100))  # two workers: slices of at most 100 windows
