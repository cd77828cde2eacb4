"""A titled plotext plot of one series (a line over steps/cycles, or horizontal bars by name)."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class MetricPlot(PlotextPlot):
    """Keeps its data (`x`, `y`) so it can redraw on resize and tests can read what is plotted."""

    def __init__(self, title: str, *, xlabel: str = "", ylabel: str = "", bars: bool = False,
                 ylim: tuple[float, float] | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title_text, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.bars, self.ylim = bars, ylim
        self.x: list = []
        self.y: list[float] = []
        self.note = ""

    def on_mount(self) -> None:
        self.replot()

    def set_data(self, x: list, y: list[float], note: str = "") -> None:
        self.x, self.y, self.note = list(x), list(y), note
        self.replot()

    def append(self, x, y: float) -> None:
        self.x.append(x)
        self.y.append(y)
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_figure()
        title = self.title_text + (f" ({self.note})" if self.note else "")
        plt.title(title if self.x else f"{title}: no data yet")
        if self.bars:
            if self.x:
                plt.bar(self.x, self.y, orientation="horizontal", width=0.3)
                if self.ylim:
                    plt.xlim(*self.ylim)
        else:
            if self.xlabel:
                plt.xlabel(self.xlabel)
            if self.x:
                plt.plot(self.x, self.y, marker="braille")
                if all(isinstance(v, int) for v in self.x):
                    plt.xticks(_int_ticks(self.x))
            if self.ylim:
                plt.ylim(*self.ylim)
        self.refresh()


def _int_ticks(xs: list[int], most: int = 6) -> list[int]:
    """Whole-number ticks (steps and cycles are counts): all of them if few, else evenly spread."""
    lo, hi = min(xs), max(xs)
    if hi - lo < most:
        return list(range(lo, hi + 1))
    step = -(-(hi - lo) // (most - 1))
    return list(range(lo, hi, step)) + [hi]
