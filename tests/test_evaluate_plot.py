"""``detector evaluate --plot DIR``: one PNG per device, and one line when matplotlib is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from detector.exits import EXIT_CONFIG
from detector.plot import file_names, plot_device
from tests.conftest import DemoData

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_evaluate_plot_writes_one_png_per_device(
    demo_data: DemoData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    frame = demo_data.anomalous.readings.copy()
    frame["anomaly"] = demo_data.anomalous.labels["anomaly"].to_numpy()
    # A device id that is no file name: it is written under a safe one.
    first = frame["device_id"].iloc[0]
    frame["device_id"] = frame["device_id"].replace(first, "site A/pump:1")
    frame.to_csv(tmp_path / "stream.csv", index=False)
    plots = tmp_path / "plots"
    code = main(
        [
            "evaluate", "--model", str(demo_data.model.path),
            "--config", str(ROOT / "configs" / "detector.yaml"), "--labels", "anomaly",
            "--out", str(tmp_path / "backtest"), "--plot", str(plots), "--quiet",
            str(tmp_path / "stream.csv"),
        ]
    )  # fmt: skip
    assert code == 0
    devices = frame["device_id"].unique()
    expected = {f"{stem}.png" for stem in file_names(devices).values()}
    assert "site_A_pump_1.png" in expected
    assert {p.name for p in plots.iterdir()} == expected
    for png in plots.iterdir():
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 20_000, png  # three panels of drawn lines, not an empty canvas
    assert f"wrote {len(devices)} plots to {plots}" in capsys.readouterr().out


def test_evaluate_plot_without_matplotlib_exits_2_with_one_line(
    demo_data: DemoData,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    demo_data.anomalous.readings.head(100).to_csv(tmp_path / "data.csv", index=False)
    code = main(
        [
            "evaluate", "--model", str(demo_data.model.path), "--out", str(tmp_path / "o"),
            "--plot", str(tmp_path / "plots"), str(tmp_path / "data.csv"),
        ]
    )  # fmt: skip
    assert code == EXIT_CONFIG
    assert capsys.readouterr().err == (
        "detector evaluate: --plot needs matplotlib: pip install 'sensor-anomaly-detector[plot]'\n"
    )
    assert not (tmp_path / "o").exists()


def test_file_names_are_safe_and_distinct() -> None:
    names = file_names(["pump-1", "a/b", "a_b", "A_B", "../etc", "", "x" * 300])
    assert names["pump-1"] == "pump-1"
    assert names["a/b"] == "a_b"
    assert names["a_b"] == "a_b-2"
    assert names["A_B"] == "A_B-3"
    assert names["../etc"] == "_etc"
    assert names[""] == "_"
    assert len(names["x" * 300]) == 100
    assert len({n.lower() for n in names.values()}) == len(names)


def test_only_drawing_imports_matplotlib() -> None:
    """The daemon, the CLI and the benchmarks' helpers import matplotlib only to draw."""
    code = (
        "import sys, detector.daemon, detector.cli, detector.plot, bench.report\n"
        "print('matplotlib' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_each_model_swap_is_marked_where_the_new_model_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)  # keep the figure to look at it
    rows = 50
    x = np.arange(rows, dtype=np.float64)
    scores = np.linspace(1.0, 2.0, rows)
    plot_device(
        tmp_path / "d.png", "d", x, None, ["s"], scores, np.full(rows, 1.5),
        scores > 1.5, swap_rows=[20, 35, rows + 5],
    )  # fmt: skip
    (figure,) = drawn
    score_axis = figure.axes[0]
    swaps = [line for line in score_axis.get_lines() if line.get_linestyle() == ":"]
    # Rows past the end are not drawn; each swap is a vertical line at its row.
    assert sorted(line.get_xdata()[0] for line in swaps) == [20.0, 35.0]
    labels = [text.get_text() for text in score_axis.get_legend().get_texts()]
    assert "model swap (2)" in labels
    plt.close(figure)
