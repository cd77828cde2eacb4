"""The Plots tab: training loss per step (live while training), and by cycle: frozen-eval pass rate, median
steps to green and per-family pass rates. Numbers come from sleepy_tui.metrics (via the state snapshot)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid

from ... import events as ev
from ..state import StateSnapshot
from .metric_plot import MetricPlot


class PlotsPanel(Grid):
    def __init__(self, *, id: str = "plots-panel") -> None:
        super().__init__(id=id)

    def compose(self) -> ComposeResult:
        yield MetricPlot("Training loss", xlabel="step", id="plot-loss")
        yield MetricPlot("Eval pass rate %", xlabel="cycle", ylim=(0, 100), id="plot-pass-rate")
        yield MetricPlot("Median steps to green", xlabel="cycle", id="plot-steps")
        yield MetricPlot("Pass rate % by family", bars=True, ylim=(0, 100), id="plot-family")

    def show_history(self, snap: StateSnapshot, *, keep_loss: bool = False) -> None:
        rows = snap.cycle_rows
        self.query_one("#plot-pass-rate", MetricPlot).set_data(
            [r.cycle for r in rows], [round(r.pass_rate_mean * 100, 1) for r in rows])
        steps = [r for r in rows if r.metrics.median_steps_to_green is not None]
        self.query_one("#plot-steps", MetricPlot).set_data(
            [r.cycle for r in steps], [r.metrics.median_steps_to_green for r in steps])
        fams = snap.family_rates
        self.query_one("#plot-family", MetricPlot).set_data(
            list(fams), [round(v["rate"] * 100, 1) for v in fams.values()], note=snap.family_source)
        if not keep_loss:
            self.query_one("#plot-loss", MetricPlot).set_data(
                [p["step"] for p in snap.loss_curve], [p["loss"] for p in snap.loss_curve])

    def train_started(self, e: ev.TrainStarted) -> None:
        plot = self.query_one("#plot-loss", MetricPlot)
        keep = [(x, y) for x, y in zip(plot.x, plot.y) if x <= e.resumed_from] if e.resumed_from else []
        plot.set_data([x for x, _ in keep], [y for _, y in keep])

    def train_step(self, e: ev.TrainStep) -> None:
        self.query_one("#plot-loss", MetricPlot).append(e.step, e.loss)
