"""Alert rules (pure state machines) and the alert wire message.

A device *fires* when k of its last n windows score over the threshold, and *resolves* after
``resolve_after`` consecutive *clear* windows: one ``firing`` and one ``resolved`` message per
episode, however long the episode lasts. A window is clear when its score is at or below
``resolve_ratio`` x threshold (hysteresis: with a ratio below 1, scores hovering just under the
threshold keep an episode open instead of flapping). After a resolve, no new episode fires for
``cooldown`` windows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from detector.core.routing import DEFAULT_PROFILE

__all__ = ["Alert", "AlertRule", "DeviceAlertState", "TopSensor", "alert_id", "make_alert"]

AlertState = Literal["firing", "resolved"]

# Fixed namespace: the same (device, window end, model version, state) always gives the same id,
# across restarts and replicas, so consumers can drop duplicates of an at-least-once delivery.
_ALERT_NAMESPACE = uuid.UUID("6f1c1c39-8d43-4f57-9a0e-1d7f5f0b7a11")


@dataclass(frozen=True)
class AlertRule:
    """k-of-n firing, consecutive-clear resolving with a hysteresis level, and a cooldown.

    Its defaults are the configuration's (:class:`~detector.config.AlertConfig` reads them from
    here): re-fires within 10 windows and scores between 0.7 and 1 x the threshold stay one
    episode (docs/quality.md, round 4).
    """

    fire_k: int = 1
    fire_n: int = 1
    resolve_after: int = 10
    resolve_ratio: float = 0.7
    cooldown: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.fire_k <= self.fire_n:
            raise ValueError("need 1 <= fire_k <= fire_n")
        if self.fire_n > 62:
            raise ValueError("fire_n must be <= 62")
        if self.resolve_after < 1:
            raise ValueError("resolve_after must be >= 1")
        if not 0.0 < self.resolve_ratio <= 1.0:
            raise ValueError("resolve_ratio must be in (0, 1]")
        if self.cooldown < 0:
            raise ValueError("cooldown must be >= 0")

    def levels(self, score: float, threshold: float) -> tuple[bool, bool]:
        """(over, clear) for a window's score: over the threshold; at or under the resolve level.

        With ``resolve_ratio`` 1 the two are exact complements, as in the rule without hysteresis.
        """
        return score > threshold, score <= self.resolve_ratio * threshold


@dataclass(slots=True)
class DeviceAlertState:
    """One device's position in the rule: recent over/under flags and whether it is firing.

    :meth:`advance` is the rule's one implementation; :meth:`update` and :meth:`observe` feed it
    a single window.
    """

    recent: int = 0  # bit i set = the window i steps ago was over the threshold
    firing: bool = False
    below_streak: int = 0
    cooldown_left: int = 0

    def advance(
        self,
        rule: AlertRule,
        rows: Iterable[int],
        over: Sequence[bool],
        clear: Sequence[bool],
        firing: MutableSequence[bool],
        transitions: list[tuple[int, AlertState]],
    ) -> None:
        """Feed the windows ``over[row]`` and ``clear[row]`` for each of ``rows`` in turn.

        ``over``: the window scored over the threshold; ``clear``: at or below the resolve level.
        Whether the device fires after each row goes to ``firing[row]``, each transition to
        ``transitions`` as ``(row, state)``. The state is kept in locals over the rows: a batch
        with several windows of a device pays the attribute reads and writes once.
        """
        mask = (1 << rule.fire_n) - 1
        fire_k, resolve_after = rule.fire_k, rule.resolve_after
        recent, firing_now = self.recent, self.firing
        streak, cooldown_left = self.below_streak, self.cooldown_left
        for row in rows:
            is_over = over[row]
            recent = ((recent << 1) | is_over) & mask
            if not firing_now:
                if cooldown_left > 0:
                    # Overs seen during the cooldown still count once it ends.
                    cooldown_left -= 1
                # Only an over window starts an episode, also when overs from the cooldown
                # complete the k of n.
                elif is_over and recent.bit_count() >= fire_k:
                    firing_now = True
                    streak = 0
                    transitions.append((row, "firing"))
            elif not clear[row]:
                streak = 0
            else:
                streak += 1
                if streak >= resolve_after:
                    firing_now = False
                    recent = 0
                    streak = 0
                    cooldown_left = rule.cooldown
                    transitions.append((row, "resolved"))
            firing[row] = firing_now
        self.recent, self.firing = recent, firing_now
        self.below_streak, self.cooldown_left = streak, cooldown_left

    def update(self, rule: AlertRule, over: bool, clear: bool | None = None) -> AlertState | None:
        """Feed one window's verdicts (:meth:`advance`); returns the transition it caused, if any.

        ``clear`` says the window is below the resolve level; ``None`` means ``not over`` (no
        hysteresis).
        """
        transitions: list[tuple[int, AlertState]] = []
        # Plain bools: a numpy bool would turn the recent flags into a numpy integer.
        over = bool(over)
        clear = not over if clear is None else bool(clear)
        self.advance(rule, _ONE_ROW, (over,), (clear,), [False], transitions)
        return transitions[0][1] if transitions else None

    def observe(self, rule: AlertRule, score: float, threshold: float) -> AlertState | None:
        """Feed one window's score against ``threshold``; returns the transition, if any."""
        return self.update(rule, *rule.levels(score, threshold))


# The rows of a single window fed to DeviceAlertState.advance.
_ONE_ROW = (0,)


class TopSensor(BaseModel):
    """A sensor and its share of the window's reconstruction error."""

    sensor: str
    share: float


class Alert(BaseModel):
    """The message published on the alerts topic (keyed by device id)."""

    model_config = ConfigDict(extra="forbid")

    alert_id: str
    state: AlertState
    device_id: str
    window_start: float
    window_end: float
    score: float
    threshold: float
    severity: float = Field(description="score / threshold")
    model_version: str
    profile: str = Field(DEFAULT_PROFILE, description="the device profile whose model scored it")
    top_sensors: list[TopSensor]
    detected_at: float = Field(description="epoch seconds when the daemon scored the window")


def alert_id(device_id: str, window_end: float, model_version: str, state: AlertState) -> str:
    """Deterministic id for an alert, identical for redeliveries of the same alert."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{device_id}|{window_end!r}|{model_version}|{state}"))


def make_alert(
    transition: AlertState,
    device_id: str,
    span: tuple[float, float],
    score: float,
    threshold: float,
    model_version: str,
    top_sensors: list[dict[str, float | str]],
    detected_at: float,
    profile: str = DEFAULT_PROFILE,
) -> Alert:
    """The message for a device's transition at the window spanning ``span`` (start, end)."""
    start, end = span
    return Alert(
        alert_id=alert_id(device_id, end, model_version, transition),
        state=transition,
        device_id=device_id,
        window_start=start,
        window_end=end,
        score=score,
        threshold=threshold,
        severity=score / threshold,
        model_version=model_version,
        profile=profile,
        top_sensors=[TopSensor.model_validate(item) for item in top_sensors],
        detected_at=detected_at,
    )
