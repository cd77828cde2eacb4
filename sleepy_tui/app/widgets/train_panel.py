"""The training control panel: trainer settings (validated through Settings.replace), Start / Stop / Resume,
progress with step, tokens/s and ETA, the live loss curve and the trainer's log."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, ProgressBar, RichLog, Select, Static

from ... import events as ev
from ...config import TRAIN_BACKENDS, Settings, backend_kind
from ...engine import AdapterRecord
from .. import keys
from .metric_plot import MetricPlot

# (Settings field, label, parse, Input type)
FIELDS = (("steps", "Steps", int, "integer"), ("learning_rate", "Learning rate", float, "number"),
          ("lora_rank", "LoRA rank", int, "integer"), ("lora_alpha", "LoRA alpha", int, "integer"),
          ("batch_size", "Batch size", int, "integer"), ("replay_share", "Replay share", float, "number"))
DEVICES = (("auto", ""), ("cpu", "cpu"), ("cuda", "cuda"), ("mps", "mps"))


def fmt_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class TrainPanel(Horizontal):
    def __init__(self, settings: Settings, *, id: str = "train-panel") -> None:
        super().__init__(id=id)
        self.settings = settings
        self.total_steps = settings.steps

    def compose(self) -> ComposeResult:
        s = self.settings
        with VerticalScroll(id="train-form"):
            with Horizontal(classes="field"):
                yield Label("Trainer")
                yield Select([(b, b) for b in TRAIN_BACKENDS], value=s.train_backend, allow_blank=False,
                             id="train-backend", compact=True, classes="train-field")
            with Horizontal(classes="field"):
                yield Label("Device")
                yield Select(DEVICES, value="", allow_blank=False, id="train-device", compact=True)
            with Horizontal(classes="field"):
                yield Label("Base model")
                yield Static(self._base_model(s), id="train-base-model")
            with Horizontal(classes="field"):
                yield Label("Adapter")
                yield Static("none (base model)", id="train-adapter")
            for name, label, _parse, kind in FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input(str(getattr(s, name)), type=kind, id=f"train-{name}", compact=True,
                                classes="train-field")
            yield Static("", id="train-problems")
            with Horizontal(id="train-buttons"):
                yield Button("Start", id="train-start", variant="primary", compact=True,
                             tooltip=keys.tooltip("main", "train"))
                yield Button("Stop", id="train-stop", variant="error", compact=True, disabled=True,
                             tooltip=keys.tooltip("main", "stop"))
                yield Button("Resume", id="train-resume", compact=True,
                             tooltip=keys.tooltip("main", "resume_training"))
        with Vertical(id="train-status"):
            yield ProgressBar(total=s.steps, show_eta=False, id="train-progress")
            yield Static("idle · press Start (t) to train an adapter on the verified fixes", id="train-stats")
            yield MetricPlot("Training loss", xlabel="step", id="train-loss")
            yield RichLog(id="train-log", wrap=True, min_width=20, max_lines=2000)

    @staticmethod
    def _base_model(s: Settings) -> str:
        if (kind := backend_kind(s.backend)) and kind.hf_model and s.model:
            return s.model
        from ...models import display_name, table
        named = s.model if s.model and (table().find(s.model) or s.model.endswith(".gguf")) else ""
        return f"{display_name(named)} (embedded)"

    # ---- the form ---------------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self.query_one("#train-device", Select).value or ""

    def read_form(self) -> dict:
        """The form as Settings changes; raises ValueError naming the field that is not a number."""
        changes: dict = {"train_backend": self.query_one("#train-backend", Select).value}
        for name, label, parse, _kind in FIELDS:
            raw = self.query_one(f"#train-{name}", Input).value.strip()
            try:
                changes[name] = parse(raw)
            except ValueError:
                kind = "a whole number" if parse is int else "a number"
                raise ValueError(f"{name}: {label.lower()} must be {kind}, got {raw!r}") from None
        return changes

    def show_problems(self, problems: str) -> None:
        self.query_one("#train-problems", Static).update(Text(problems, style="bold red") if problems else "")

    def show_settings(self, s: Settings) -> None:
        self.settings = s
        self.query_one("#train-base-model", Static).update(self._base_model(s))

    def show_adapter(self, adapter: AdapterRecord | None) -> None:
        self.query_one("#train-adapter", Static).update(adapter.adapter_id if adapter else "none (base model)")

    def set_running(self, running: bool, blocked: bool = False) -> None:
        """`blocked`: a cycle is training, so the panel's own buttons stay off."""
        self.query_one("#train-start", Button).disabled = running or blocked
        self.query_one("#train-resume", Button).disabled = running or blocked
        self.query_one("#train-stop", Button).disabled = not running
        for widget in self.query(".train-field"):
            widget.disabled = running

    # ---- what the trainer reports --------------------------------------------------------------------------

    def log(self, text: str | Text) -> None:
        self.query_one("#train-log", RichLog).write(text)

    def train_started(self, e: ev.TrainStarted) -> None:
        self.total_steps = e.total_steps
        self.query_one("#train-progress", ProgressBar).update(total=e.total_steps, progress=e.resumed_from)
        plot = self.query_one("#train-loss", MetricPlot)
        keep = [(x, y) for x, y in zip(plot.x, plot.y) if x <= e.resumed_from] if e.resumed_from else []
        plot.set_data([x for x, _ in keep], [y for _, y in keep])
        note = f", resumed from step {e.resumed_from}" if e.resumed_from else ""
        self.log(f"training on {e.examples} examples for {e.total_steps} steps{note} → {Path(e.run_dir).name}")
        loaded = f"{e.load_detail or 'loaded the base model'} in {fmt_eta(e.load_s)} · " if e.load_s else ""
        self.query_one("#train-stats", Static).update(
            f"step {e.resumed_from}/{e.total_steps} · {loaded}first step (warm-up, left out of the ETA)…")

    def train_step(self, e: ev.TrainStep) -> None:
        self.query_one("#train-progress", ProgressBar).update(total=e.total_steps, progress=e.step)
        self.query_one("#train-stats", Static).update(
            f"step {e.step}/{e.total_steps} · loss {e.loss:.4f} · lr {e.learning_rate:.1e} · "
            f"{e.tokens_per_s:.0f} tok/s · {e.seconds:.0f} s/step · ETA {fmt_eta(e.eta_s)}")
        self.query_one("#train-loss", MetricPlot).append(e.step, e.loss)
        if e.step == 1 or e.step == e.total_steps or e.step % 10 == 0:
            self.log(f"step {e.step}/{e.total_steps} loss {e.loss:.4f}")

    def train_done(self, e: ev.TrainDone) -> None:
        first = f"{e.initial_loss:.4f}" if e.initial_loss is not None else "?"
        last = f"{e.final_loss:.4f}" if e.final_loss is not None else "?"
        if e.stopped:
            self.log(Text(f"stopped at step {e.steps}; Resume (u) continues from the checkpoint", style="yellow"))
            self.query_one("#train-stats", Static).update(f"stopped at step {e.steps}/{self.total_steps} · "
                                                          "Resume (u) continues")
        else:
            self.log(Text(f"done: {e.steps} steps, loss {first} → {last}", style="green"))
            self.query_one("#train-stats", Static).update(f"done · {e.steps} steps · loss {first} → {last}")

    def show_curve(self, curve: list[dict]) -> None:
        """The latest adapter's recorded loss curve (restored on start)."""
        self.query_one("#train-loss", MetricPlot).set_data([p["step"] for p in curve], [p["loss"] for p in curve])
