"""The pure cores shared by the trainer, the daemon and the backtest; none imports Kafka.

Model and artifact (:mod:`~detector.core.model`, :mod:`~detector.core.artifact`), scaling,
windows, scoring, thresholds, calibration, adaptation, alert rules, readings and their admission,
the per-device registry and per-partition offsets. I/O lives at the edges: the daemon's Kafka
shells in :mod:`detector`, the trainer's data loading in :mod:`trainer`.
"""
