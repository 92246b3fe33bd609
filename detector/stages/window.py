"""Window: ready windows wait here, copied out of the ring buffers, until their batch is due.

Admission (:mod:`detector.stages.admit`) puts each reading into its device's ring buffer
(:class:`~detector.core.windows.WindowStore`); a reading that completes a window has the window
copied into :class:`PendingWindows`, since the ring buffer changes with the next reading. A batch
is due when full or when its latency budget (``scoring.max_wait_ms``) is spent, counting the time
its forward pass is predicted to take.
"""

from __future__ import annotations

import time

import numpy as np

from detector.core.windows import WindowStore

__all__ = ["PendingWindows"]

_SMOOTHING = 0.2  # weight of the newest batch in the forward-pass time per window


class PendingWindows:
    """Ready windows waiting to be scored together, and when they are due.

    ``batch_size`` windows make a batch, but a record is always ingested whole (a gateway batch
    can hold many readings), so the buffer grows past it rather than split a record.
    """

    def __init__(self, batch_size: int, max_wait_ms: float, length: int, n_features: int) -> None:
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.windows = np.empty((batch_size, length, n_features), dtype=np.float32)
        self.device_ids: list[str] = []
        self.spans: list[tuple[float, float]] = []
        self.live: list[bool] = []  # False while rebuilding: score for state, publish nothing
        self.oldest: float | None = None  # monotonic time the first window was added
        self.seconds_per_window = 0.0  # forward-pass time per window, smoothed over batches

    def __len__(self) -> int:
        return len(self.device_ids)

    @property
    def full(self) -> bool:
        """A batch's worth of windows is waiting."""
        return len(self.device_ids) >= self.batch_size

    def add(self, store: WindowStore, slot: int, device_id: str, live: bool, now: float) -> None:
        """Copy the device's current window in (it will change as more readings arrive)."""
        self._reserve(len(self.device_ids) + 1)
        store.window(slot, out=self.windows[len(self.device_ids)])
        self.device_ids.append(device_id)
        self.spans.append(store.window_span(slot))
        self.live.append(live)
        if self.oldest is None:
            self.oldest = now

    def extend(
        self,
        windows: np.ndarray,
        device_ids: list[str],
        spans: np.ndarray,
        live: np.ndarray,
        now: float,
    ) -> None:
        """Add windows cut elsewhere (:meth:`~detector.core.windows.WindowStore.append_many`)."""
        if not device_ids:
            return
        count, needed = len(self.device_ids), len(self.device_ids) + len(device_ids)
        self._reserve(needed)
        self.windows[count:needed] = windows
        self.device_ids.extend(device_ids)
        self.spans.extend(map(tuple, spans.tolist()))
        self.live.extend(live.tolist())
        if self.oldest is None:
            self.oldest = now

    def _reserve(self, needed: int) -> None:
        """Room for ``needed`` windows, doubling the buffer (at least) when it is short."""
        if needed > len(self.windows):
            grown = np.empty(
                (max(needed, 2 * len(self.windows)), *self.windows.shape[1:]), np.float32
            )
            grown[: len(self.device_ids)] = self.windows[: len(self.device_ids)]
            self.windows = grown

    def waited(self) -> float:
        """Seconds the oldest pending window has waited (0 when none is pending)."""
        return 0.0 if self.oldest is None else time.monotonic() - self.oldest

    def latency_ms(self) -> float:
        """The oldest window's wait so far plus the predicted time to score them all."""
        return 1000 * (self.waited() + len(self) * self.seconds_per_window)

    def due(self) -> bool:
        """Whether to score now: a full batch, or ``max_wait_ms`` reached with the scoring time.

        The forward pass is part of the latency ``scoring.max_wait_ms`` bounds, so a batch is
        scored early enough for its predicted scoring time to fit: under load batches stay
        small enough to be scored within the budget instead of growing to ``max_batch_size``.
        """
        if not self.device_ids:
            return False
        return self.full or self.latency_ms() >= self.max_wait_ms

    def wait_ms(self) -> int | None:
        """Milliseconds until the windows are due (``None``: nothing is pending)."""
        if not self.device_ids:
            return None
        return max(int(self.max_wait_ms - self.latency_ms()), 0)

    def scored(self, count: int, seconds: float) -> None:
        """``count`` windows took ``seconds`` to score: the next batches' predicted time.

        Per window, smoothed: a batch's cost is close to linear in its size on CPU and GPU.
        """
        self.seconds_per_window += _SMOOTHING * (seconds / count - self.seconds_per_window)

    def take(
        self,
    ) -> tuple[np.ndarray, list[str], list[tuple[float, float]], np.ndarray, float | None]:
        """Hand the windows over for scoring and start empty.

        Returns the windows (a view, valid until the next window is added), device ids, spans,
        which are live, and how long the oldest waited (seconds; ``None`` if none is live).
        """
        count = len(self.device_ids)
        live = np.asarray(self.live, dtype=bool)
        waited = self.waited() if live.any() else None
        taken = (self.windows[:count], self.device_ids, self.spans, live, waited)
        self.device_ids, self.spans, self.live, self.oldest = [], [], [], None
        return taken
