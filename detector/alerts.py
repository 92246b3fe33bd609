"""Alert rules (pure state machines) and the alert wire message.

A device *fires* when k of its last n windows score over the threshold, and *resolves* after
``resolve_after`` consecutive windows below it: one ``firing`` and one ``resolved`` message per
episode, however long the episode lasts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AlertState = Literal["firing", "resolved"]

# Fixed namespace: the same (device, window end, model version, state) always gives the same id,
# across restarts and replicas, so consumers can drop duplicates of an at-least-once delivery.
_ALERT_NAMESPACE = uuid.UUID("6f1c1c39-8d43-4f57-9a0e-1d7f5f0b7a11")


@dataclass(frozen=True)
class AlertRule:
    """k-of-n firing and consecutive-below resolving."""

    fire_k: int = 1
    fire_n: int = 1
    resolve_after: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.fire_k <= self.fire_n:
            raise ValueError("need 1 <= fire_k <= fire_n")
        if self.fire_n > 62:
            raise ValueError("fire_n must be <= 62")
        if self.resolve_after < 1:
            raise ValueError("resolve_after must be >= 1")


@dataclass
class DeviceAlertState:
    """One device's position in the rule: recent over/under flags and whether it is firing."""

    recent: int = 0  # bit i set = the window i steps ago was over the threshold
    firing: bool = False
    below_streak: int = 0

    def update(self, rule: AlertRule, over: bool) -> AlertState | None:
        """Feed one window's verdict; returns the transition it caused, if any."""
        self.recent = ((self.recent << 1) | int(over)) & ((1 << rule.fire_n) - 1)
        if not self.firing:
            if self.recent.bit_count() >= rule.fire_k:
                self.firing = True
                self.below_streak = 0
                return "firing"
            return None
        if over:
            self.below_streak = 0
            return None
        self.below_streak += 1
        if self.below_streak >= rule.resolve_after:
            self.firing = False
            self.recent = 0
            self.below_streak = 0
            return "resolved"
        return None


@dataclass
class AlertTracker:
    """Alert-rule state for every device seen."""

    rule: AlertRule
    states: dict[str, DeviceAlertState] = field(default_factory=dict)

    def update(self, device_id: str, over: bool) -> AlertState | None:
        """Feed one window verdict for ``device_id``; returns a transition or ``None``."""
        state = self.states.get(device_id)
        if state is None:
            state = self.states[device_id] = DeviceAlertState()
        return state.update(self.rule, over)

    def firing_count(self) -> int:
        """How many devices are firing now."""
        return sum(state.firing for state in self.states.values())


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
    top_sensors: list[TopSensor]
    detected_at: float = Field(description="epoch seconds when the daemon scored the window")


def alert_id(device_id: str, window_end: float, model_version: str, state: AlertState) -> str:
    """Deterministic id for an alert, identical for redeliveries of the same alert."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{device_id}|{window_end!r}|{model_version}|{state}"))
