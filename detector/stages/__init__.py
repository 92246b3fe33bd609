"""The daemon's stages, in the order a record walks them (no Kafka I/O in any of them).

1. :mod:`~detector.stages.decode`: a partition's records → :class:`~detector.stages.decode.Readings`,
   columns of parsed readings plus each record's rejections.
2. :mod:`~detector.stages.route`: readings → the lane (device profile) each belongs to.
3. :mod:`~detector.stages.admit`: a lane's readings → admitted into their devices' windows
   (duplicates, late, future, gaps and imputation decided), in array operations where they can be.
4. :mod:`~detector.stages.window`: ready windows → a batch waiting to be scored
   (:class:`~detector.stages.window.PendingWindows`), due when full or its latency budget is spent.
5. :mod:`~detector.stages.score`: a due batch → reconstruction errors and window scores
   (:class:`~detector.stages.score.ScoredBatch`), and the shadow candidate's.
6. :mod:`~detector.stages.judge`: scores → alert transitions per device
   (:class:`~detector.stages.judge.Verdict`), drift watch fed.
7. :mod:`~detector.stages.emit`: verdicts → alert messages; rejections → counted and dead-lettered.

:class:`~detector.pipeline.Pipeline` wires them for one poll; :class:`~detector.lane.Lane` holds a
profile's state (devices, pending windows, model, drift) that the stages read and update.
"""
