"""One place for every default: the shipped YAML configs restate the config models' defaults.

A user who deletes a line from configs/*.yaml must get the same behaviour, and a default changed
in code must show in the file users read (and in the benchmarks, which run the files untouched).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from detector.config import DetectorConfig
from trainer.config import TrainerConfig

ROOT = Path(__file__).resolve().parent.parent


def _differences(written: dict, default: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(written) | set(default)):
        name = f"{prefix}{key}"
        mine, theirs = written.get(key), default.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            out += _differences(mine, theirs, f"{name}.")
        elif mine != theirs:
            out.append(f"{name}: file {mine!r}, default {theirs!r}")
    return out


def test_trainer_yaml_states_the_trainer_defaults() -> None:
    values = yaml.safe_load((ROOT / "configs" / "trainer.yaml").read_text())
    required = {"data": values["data"], "output": values["output"]}
    written = TrainerConfig.model_validate(values).model_dump(mode="json")
    default = TrainerConfig.model_validate(required).model_dump(mode="json")
    assert _differences(written, default) == []


def test_detector_yaml_states_the_detector_defaults() -> None:
    values = yaml.safe_load((ROOT / "configs" / "detector.yaml").read_text())
    written = DetectorConfig.model_validate(values).model_dump(mode="json")
    default = DetectorConfig.model_validate({"model": values["model"]}).model_dump(mode="json")
    assert _differences(written, default) == []
