"""Scoring split over single-threaded workers (``scoring.threads``) gives the one-pass result."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from detector.core.model import LSTMAutoencoder, ModelSpec, ScoreSpec
from detector.core.scaling import StandardScaler
from detector.core.scoring import Scorer


def _scorer(threads: int, max_batch_size: int = 64) -> Scorer:
    torch.manual_seed(0)
    model = LSTMAutoencoder(ModelSpec(n_features=4, hidden_size=16, latent_size=4))
    scaler = StandardScaler(mean=np.full(4, 10.0), scale=np.full(4, 2.0))
    spec = ScoreSpec(sensor_scale=[1.0, 2.0, 0.5, 4.0])
    return Scorer(model, scaler, "cpu", max_batch_size, spec, threads=threads)


@pytest.mark.parametrize("count", [0, 1, 5, 17, 64, 150])
@pytest.mark.parametrize("threads", [2, 3])
def test_workers_give_the_same_errors_as_one_pass(count: int, threads: int) -> None:
    windows = np.random.default_rng(count).normal(10.0, 2.0, size=(count, 12, 4))
    windows = windows.astype(np.float32)
    expected = _scorer(threads=1).sensor_errors(windows)
    np.testing.assert_array_equal(_scorer(threads).sensor_errors(windows), expected)


def test_workers_run_single_threaded_and_leave_the_caller_alone() -> None:
    before = torch.get_num_threads()
    scorer = _scorer(threads=2)
    assert scorer.threads == 2
    assert torch.get_num_threads() == before
    assert scorer._workers is not None
    barrier = threading.Barrier(2)

    def intra_op_threads(_: int) -> int:
        barrier.wait()  # both workers at once, so each reports its own setting
        return torch.get_num_threads()

    assert list(scorer._workers.map(intra_op_threads, [0, 1])) == [1, 1]
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [before]  # threads started afterwards keep the process default


def test_zero_threads_means_one_worker_per_intra_op_thread() -> None:
    assert _scorer(threads=0).threads == torch.get_num_threads()
    assert _scorer(threads=1)._workers is None
