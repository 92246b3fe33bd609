"""Scoring: scale raw windows, reconstruct them with the autoencoder, and measure the error.

A sensor's error is its mean squared reconstruction error over the time steps of the scaled
window, divided by its normal level when the artifact's :class:`ScoreSpec` says so; the window
score aggregates the sensor errors (mean by default, or max). The trainer derives its threshold
through the same :class:`Scorer`, so a score means the same thing in training, in benchmarks and
in the daemon.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from detector.core.artifact import Artifact
from detector.core.model import Aggregation, LSTMAutoencoder, ScoreSpec
from detector.core.scaling import StandardScaler

__all__ = [
    "Scorer",
    "fit_mahalanobis",
    "ladder_sizes",
    "log_errors",
    "padded_batch_size",
    "resolve_device",
    "sensor_errors",
    "single_threaded_workers",
    "top_sensor_shares",
    "window_scores",
]

log = logging.getLogger(__name__)

# Fewest windows worth handing to a worker of their own: below this, fewer workers are used.
_MIN_WINDOWS_PER_WORKER = 16


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a start-up error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("scoring.device is 'cuda' but torch sees no CUDA device")
    return torch.device(choice)


@torch.inference_mode()
def sensor_errors(model: LSTMAutoencoder, scaled: torch.Tensor) -> torch.Tensor:
    """Per-window, per-sensor mean squared reconstruction error: ``(batch, features)``."""
    reconstruction = model(scaled)
    return (reconstruction - scaled).pow(2).mean(dim=1)


def padded_batch_size(count: int) -> int:
    """The batch size ``count`` windows are scored at: the next step of a bounded ladder.

    Exact up to 16; above, eight steps per doubling (18, 20, ..., 32, 36, 40, ...) with at most
    an eighth of the batch padding. Sizes up to 1024 use 64 shapes in all.
    """
    if count <= 16:
        return count
    step = 1 << ((count - 1).bit_length() - 4)
    return -(-count // step) * step


def ladder_sizes(max_batch_size: int) -> list[int]:
    """Every size :func:`padded_batch_size` gives for batches of 1 to ``max_batch_size``."""
    return sorted({padded_batch_size(count) for count in range(1, max_batch_size + 1)})


# Errors are floored before the log: a sensor reconstructed perfectly must not score -inf.
_LOG_ERROR_FLOOR = 1e-6


def log_errors(errors: np.ndarray) -> np.ndarray:
    """The per-sensor errors on the log scale the Mahalanobis score is fitted on."""
    return np.log(np.maximum(errors, _LOG_ERROR_FLOOR), dtype=np.float64)


def window_scores(
    errors: np.ndarray, aggregation: Aggregation = "mean", spec: ScoreSpec | None = None
) -> np.ndarray:
    """Collapse per-sensor errors ``(batch, features)`` into one score per window.

    ``mahalanobis`` needs the spec's fitted ``error_center`` and ``error_whitening``: the score
    is the squared Mahalanobis distance of the window's log errors from normal ones, divided by
    the number of sensors (so it reads like a mean). It sees a sensor whose error is unusual
    *for that sensor*, and a pair whose errors usually move together but did not.
    """
    if aggregation == "max":
        return errors.max(axis=1)
    if aggregation == "mahalanobis":
        if spec is None or spec.error_center is None or spec.error_whitening is None:
            raise ValueError("mahalanobis scores need a spec with error_center and error_whitening")
        centred = log_errors(errors) - np.asarray(spec.error_center)
        whitened = centred @ np.asarray(spec.error_whitening).T
        return np.square(whitened).sum(axis=1) / errors.shape[1]
    return errors.mean(axis=1)


def fit_mahalanobis(
    errors: np.ndarray, shrinkage: float = 0.1
) -> tuple[list[float], list[list[float]]]:
    """Centre and whitening of normal windows' log errors ``(windows, features)``.

    The covariance is shrunk towards its diagonal (``shrinkage``) so that it inverts stably with
    fewer windows than a full covariance needs, and each variance is floored.
    """
    logs = log_errors(errors)
    if len(logs) < 2:
        raise ValueError("mahalanobis needs at least 2 normal windows")
    center = logs.mean(axis=0)
    covariance = np.atleast_2d(np.cov(logs, rowvar=False))
    variances = np.maximum(np.diag(covariance), 1e-6)
    shrunk = (1.0 - shrinkage) * covariance + shrinkage * np.diag(variances)
    shrunk[np.diag_indices_from(shrunk)] = np.maximum(np.diag(shrunk), 1e-6)
    lower = np.linalg.cholesky(shrunk)
    whitening = np.linalg.inv(lower)
    return center.tolist(), whitening.tolist()


def top_sensor_shares(
    errors: np.ndarray, feature_names: list[str], count: int
) -> list[dict[str, float | str]]:
    """The ``count`` sensors with the largest share of one window's error, largest first."""
    total = float(errors.sum())
    order = np.argsort(errors)[::-1][:count]
    return [
        {
            "sensor": feature_names[i],
            "share": round(float(errors[i]) / total, 4) if total > 0 else 0.0,
        }
        for i in order
    ]


def _one_intra_op_thread() -> None:
    # torch sets up a thread's intra-op count on first use, from the process default: do that
    # first, or restoring the default below would later undo this thread's setting.
    torch.get_num_threads()
    torch.set_num_threads(1)


def single_threaded_workers(count: int) -> ThreadPoolExecutor:
    """``count`` worker threads whose torch ops each run on one intra-op thread.

    On CPU, torch runs an op on an OpenMP team spanning every core, which waits at a barrier
    after each of the thousands of small ops of an LSTM forward pass: when anything else needs a
    core (the Kafka client, the broker, a neighbour on a shared node), the whole team stalls and
    scoring slows down several-fold. Workers that each score their own slice of a batch on one
    thread never wait for each other. The intra-op setting is per thread under OpenMP, but it
    also becomes the default of threads started later, so the caller's is put back afterwards.
    """
    previous = torch.get_num_threads()
    started = threading.Barrier(count)
    workers = ThreadPoolExecutor(
        count, thread_name_prefix="scorer", initializer=_one_intra_op_thread
    )
    # One task per worker, each held until all have started: every thread exists and ran the
    # initializer before the caller's setting is restored.
    list(workers.map(lambda _: started.wait(), range(count)))
    torch.set_num_threads(previous)
    return workers


class Scorer:
    """Scores batches of raw (unscaled) windows on one device, in chunks of ``max_batch_size``.

    The trainer scores its validation windows through this class too, so the threshold is set on
    exactly the numbers the daemon compares with it. With ``threads`` > 1 on CPU each chunk is
    split over that many single-threaded workers (see :func:`single_threaded_workers`); a
    window's errors do not depend on the other windows it is scored with, so the result is the
    same; ``threads=0`` means one worker per intra-op thread torch would use (one per core).
    """

    def __init__(
        self,
        model: LSTMAutoencoder,
        scaler: StandardScaler,
        device: str = "auto",
        max_batch_size: int = 1024,
        spec: ScoreSpec | None = None,
        threads: int = 1,
    ) -> None:
        self.device = resolve_device(device)
        self.max_batch_size = max_batch_size
        # A GPU runs a batch as one stream of kernels: splitting it only adds launches.
        self.threads = 1 if self.device.type != "cpu" else threads or torch.get_num_threads()
        self._workers = single_threaded_workers(self.threads) if self.threads > 1 else None
        self.scaler = scaler
        self.spec = spec or ScoreSpec()
        self._divisors = (
            None
            if self.spec.sensor_scale is None
            else np.asarray(self.spec.sensor_scale, dtype=np.float32)
        )
        self.model = model.to(self.device).eval()
        self._mean = torch.as_tensor(self.scaler.mean, dtype=torch.float32, device=self.device)
        self._scale = torch.as_tensor(self.scaler.scale, dtype=torch.float32, device=self.device)

    @classmethod
    def from_artifact(
        cls, artifact: Artifact, device: str = "auto", max_batch_size: int = 1024, threads: int = 1
    ) -> Scorer:
        """A scorer for a loaded artifact."""
        return cls(
            artifact.model,
            artifact.scaler,
            device,
            max_batch_size,
            artifact.metadata.scoring,
            threads,
        )

    def sensor_errors(self, windows: np.ndarray) -> np.ndarray:
        """Per-sensor errors ``(batch, features)`` for raw windows ``(batch, length, features)``.

        Normalised by the spec's ``sensor_scale`` when it has one, so alerts name the sensors
        that moved most relative to their own normal error.
        """
        if len(windows) == 0:
            return np.empty((0, windows.shape[-1]), dtype=np.float32)
        host = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.device.type == "cuda":
            host = host.pin_memory()
        chunks = []
        for start in range(0, len(host), self.max_batch_size):
            batch = host[start : start + self.max_batch_size].to(self.device, non_blocking=True)
            if self._workers is None:
                chunks.append(self._errors(batch))
            else:
                parts = min(self.threads, -(-len(batch) // _MIN_WINDOWS_PER_WORKER))
                chunks.extend(self._workers.map(self._errors, torch.tensor_split(batch, parts)))
        errors = torch.cat(chunks).float().cpu().numpy()
        return errors if self._divisors is None else errors / self._divisors

    def _errors(self, batch: torch.Tensor) -> torch.Tensor:
        # oneDNN keeps a compiled LSTM primitive for every input shape it meets (up to 1024,
        # about 0.25 MiB each): scored at whatever size each micro-batch had, the daemon grew
        # by some 130 MiB before levelling off. Padding to a ladder of 64 sizes bounds that.
        count = len(batch)
        padding = padded_batch_size(count) - count
        if padding:
            batch = torch.cat([batch, batch.new_zeros((padding, *batch.shape[1:]))])
        return sensor_errors(self.model, (batch - self._mean) / self._scale)[:count]

    def window_scores(self, errors: np.ndarray) -> np.ndarray:
        """One score per window from :meth:`sensor_errors`, aggregated as the spec says."""
        return window_scores(errors, self.spec.aggregation, self.spec)

    def warm_up(self, window_length: int, cancel: threading.Event | None = None) -> None:
        """Score one batch of every size the model can meet, so memory is flat from the start.

        Each size's first batch builds and caches its oneDNN primitives: left to the stream,
        the rare large sizes kept the daemon's memory creeping up for hours. Done here, the
        first real batches pay no lazy initialisation either (about 1 s for 64 sizes up to
        1024 windows of 32 readings, 8 sensors, on one core). With several workers the model
        only meets slices (see :meth:`sensor_errors`), and only their sizes are warmed.
        Once ``cancel`` is set it returns after the batch in progress, leaving the rest cold.
        """
        shape = (window_length, len(self.scaler.mean))
        largest_slice = max(
            -(-self.max_batch_size // self.threads),
            min(self.max_batch_size, _MIN_WINDOWS_PER_WORKER),
        )
        for size in ladder_sizes(largest_slice):
            if cancel is not None and cancel.is_set():
                return
            self._errors(torch.zeros((size, *shape), device=self.device))
        self.sensor_errors(np.zeros((1, *shape), np.float32))
