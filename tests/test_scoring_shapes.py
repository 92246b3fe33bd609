"""Micro-batches are scored at a bounded set of sizes, so the daemon's memory stays bounded."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from detector.model import LSTMAutoencoder, ModelSpec
from detector.scaling import StandardScaler
from detector.scoring import Scorer, padded_batch_size


@given(st.integers(min_value=0, max_value=1 << 20))
def test_padded_size_covers_the_batch_with_at_most_an_eighth_padding(count: int) -> None:
    padded = padded_batch_size(count)
    assert count <= padded <= max(count * 9 // 8, 16)
    assert padded_batch_size(padded) == padded


def test_every_size_up_to_1024_maps_onto_64_shapes() -> None:
    assert len({padded_batch_size(count) for count in range(1, 1025)}) == 64


def _scorer() -> Scorer:
    torch.manual_seed(0)
    model = LSTMAutoencoder(ModelSpec(n_features=3, hidden_size=8, latent_size=2))
    return Scorer(model, StandardScaler(mean=np.full(3, 5.0), scale=np.full(3, 2.0)), "cpu", 1024)


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
