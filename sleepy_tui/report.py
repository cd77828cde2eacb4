"""`sleepy report`: the results page (Markdown) and its plots (PNG), built from state/ alone.

Every number comes from metrics.py (the same source as `sleepy status` and the app's plots)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

from .metrics import CycleRow, runs_passed, store_cycle_table
from .stats import paired_change
from .atomic import write_text
from .records import AdapterRecord
from .store import Store

PLOTS = ("pass_rate_by_cycle.png", "steps_to_green_by_cycle.png", "repeat_error_rate_by_cycle.png",
         "error_distribution.png", "before_after_comparison.png", "loss_curve.png")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x, fmt="{:g}") -> str:
    return "-" if x is None else fmt.format(x)


def build_report(store: Store, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = store_cycle_table(store)
    cycles = {c.cycle: c for c in store.cycles()}
    adapters = {a.adapter_id: a for a in store.adapters()}
    md: list[str] = ["# Results: sleepy-tui training progress", "",
                     f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{store.dir}` by `sleepy report`.", ""]
    if not rows:
        md += ["No frozen-set eval yet: run `sleepy eval --cycle 0` for a baseline.", ""] + _flagged(store)
        path = out_dir / "results.md"
        write_text(path, "\n".join(md))
        return path

    base = rows[0]
    bm = base.metrics
    first_run = store.run(base.run_ids[-1])
    model = f"{first_run.backend}:{first_run.model}" if first_run else "?"
    md += ["## Baseline (before training)", "", f"Model: `{model}`"
           f"{' + adapter ' + base.adapter if base.adapter else ''}", "",
           "| Metric | Value |", "|---|---|",
           f"| Pass rate ({bm.total} frozen eval) | {_pct(bm.pass_rate)} ({bm.passed}/{bm.total}) |",
           f"| Median steps to green | {_num(bm.median_steps_to_green)} |",
           f"| Repeat error rate (within run) | {_pct(bm.repeat_error_rate)} |"]
    if len(base.pass_rates) > 1:
        md.append(f"| Pass rate over {len(base.pass_rates)} runs | mean {_pct(base.pass_rate_mean)}, "
                  f"sd {_pct(base.pass_rate_spread)} |")
    md.append("")

    md += ["## Training cycles", ""]
    by_cycle = {r.cycle: r for r in rows}
    for r in rows[1:]:
        rec = cycles.get(r.cycle)
        a = adapters.get(rec.adapter_id or "") if rec else None
        prev = by_cycle.get(max(c for c in by_cycle if c < r.cycle))
        md += [f"### Cycle {r.cycle}", ""]
        if a:
            cfg, data = a.config, a.dataset
            md += ["**Training config:**", "",
                   f"- Trainer: {a.trainer}, base: {a.base_model}",
                   f"- Steps: {a.steps}, learning rate {cfg.get('learning_rate')}, LoRA rank {cfg.get('lora_rank')}, "
                   f"alpha {cfg.get('lora_alpha')}, batch {cfg.get('batch_size')}",
                   f"- Training examples: {data.examples if data else '-'} "
                   f"({', '.join(f'{k} {v}' for k, v in (data.by_provenance if data else {}).items())})",
                   f"- Duration: {_num(a.duration_s, '{:.0f}')} s",
                   f"- Loss: {_num(a.initial_loss, '{:.3f}')} -> {_num(a.final_loss, '{:.3f}')}", ""]
        if rec:
            md += [f"**Gate:** {'promoted' if rec.promoted else 'rejected'}: {rec.reason}", ""]
        m, pm = r.metrics, prev.metrics
        ch = paired_change(runs_passed(store, prev.run_ids), runs_passed(store, r.run_ids))
        md += ["| Metric | Before | After | Delta |", "|---|---|---|---|",
               f"| Pass rate | {_pct(pm.pass_rate)} | {_pct(m.pass_rate)} | {(m.pass_rate - pm.pass_rate) * 100:+.1f} pts |",
               f"| Median steps | {_num(pm.median_steps_to_green)} | {_num(m.median_steps_to_green)} | "
               f"{_num(_minus(m.median_steps_to_green, pm.median_steps_to_green), '{:+g}')} |",
               f"| Repeat error rate | {_pct(pm.repeat_error_rate)} | {_pct(m.repeat_error_rate)} | |",
               f"| Regressions / gains | | {len(r.regressions)} / {len(r.gains)} | |", "",
               f"Significance: {ch.verdict()}; paired difference {ch.diff * 100:+.1f} pts, 95% bootstrap interval "
               f"[{ch.ci_low * 100:+.1f}, {ch.ci_high * 100:+.1f}] pts.", ""]
    if len(rows) == 1:
        md += ["No training cycle yet: `sleepy cycle` runs day -> sleep -> eval -> gate.", ""]

    md += ["## Frozen eval set performance", "",
           "| Cycle | Pass rate | Passed | Failed | Regressions | Gains | Adapter |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.metrics
        reg = "N/A (baseline)" if r is base else (", ".join(r.regressions) or "none")
        spread = f" ±{r.pass_rate_spread:.1%}" if len(r.pass_rates) > 1 else ""
        md.append(f"| {r.cycle} | {_pct(r.pass_rate_mean)}{spread} | {m.passed} | {m.total - m.passed} | {reg} | "
                  f"{', '.join(r.gains) or '-'} | {r.adapter or 'base'} |")
    md.append("")

    md += ["## Error signatures", "", "Final signature of each failed koan, by cycle:", ""]
    sigs = sorted({s for r in rows for s in r.metrics.final_signature_counts})
    md += ["| Signature | " + " | ".join(f"Cycle {r.cycle}" for r in rows) + " | Trend |",
           "|---|" + "---|" * len(rows) + "---|"]
    for s in sigs:
        counts = [r.metrics.final_signature_counts.get(s, 0) for r in rows]
        trend = "no change" if counts[0] == counts[-1] else ("down" if counts[-1] < counts[0] else "up")
        md.append(f"| `{s}` | " + " | ".join(map(str, counts)) + f" | {trend} |")
    md.append("")

    fams = sorted({f for r in rows for f in r.metrics.per_family})
    md += ["## Per-family pass rates", "", "| Family | " + " | ".join(f"Cycle {r.cycle}" for r in rows) + " |",
           "|---|" + "---|" * len(rows)]
    for f in fams:
        md.append(f"| {f} | " + " | ".join(
            f"{r.metrics.per_family[f]['passed']}/{r.metrics.per_family[f]['total']}" if f in r.metrics.per_family
            else "-" for r in rows) + " |")
    md.append("")

    trained = [a for a in adapters.values() if a.loss_curve]
    md += ["## Training metrics", "", "| Cycle | Adapter | Steps | Initial loss | Final loss | Duration | Examples | Promoted |",
           "|---|---|---|---|---|---|---|---|"]
    for a in trained:
        md.append(f"| {a.cycle} | {a.adapter_id} | {a.steps} | {_num(a.initial_loss, '{:.3f}')} | "
                  f"{_num(a.final_loss, '{:.3f}')} | {_num(a.duration_s, '{:.0f}')} s | "
                  f"{a.dataset.examples if a.dataset else '-'} | {'yes' if a.promoted else 'no'} |")
    md.append("")
    if trained:
        md += ["### Loss curve (latest adapter)", "", "```", ascii_curve(trained[-1].loss_curve), "```", ""]

    md += _flagged(store)
    written = write_plots(rows, trained, out_dir)
    md += ["## Plots", ""] + [f"![{p}]({p})" for p in written] + [""]
    path = out_dir / "results.md"
    write_text(path, "\n".join(md))
    return path


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _flagged(store: Store) -> list[str]:
    flags = sorted(store.flags(), key=lambda f: f["koan_id"])
    if not flags:
        return []
    return (["## Koans flagged as bad", "", "Flagged in the failure review; days skip them.", "",
             "| Koan | Reason |", "|---|---|"] + [f"| {f['koan_id']} | {f.get('reason', '')} |" for f in flags] + [""])


def ascii_curve(curve: list[dict], width: int = 60, height: int = 10) -> str:
    import plotext as plt
    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    plt.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker="braille")
    plt.xlabel("step")
    plt.ylabel("loss")
    return re.sub(r"\x1b\[[0-9;]*m", "", plt.build())


def write_plots(rows: list[CycleRow], trained: list[AdapterRecord], out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cyc = [r.cycle for r in rows]
    written: list[str] = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cyc, [r.pass_rate_mean * 100 for r in rows], marker="o")
    for r in rows:
        if len(r.pass_rates) > 1:
            ax.errorbar(r.cycle, r.pass_rate_mean * 100, yerr=r.pass_rate_spread * 100, color="gray", capsize=4)
    ax.set(title="Frozen eval pass rate by cycle", xlabel="cycle", ylabel="pass rate (%)", ylim=(0, 100))
    ax.set_xticks(cyc)
    save(fig, "pass_rate_by_cycle.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cyc, [r.metrics.median_steps_to_green or 0 for r in rows], marker="o", color="tab:green")
    ax.set(title="Median steps to green by cycle", xlabel="cycle", ylabel="attempts (median, passed koans)")
    ax.set_xticks(cyc)
    save(fig, "steps_to_green_by_cycle.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cyc, [(r.metrics.repeat_error_rate or 0) * 100 for r in rows], marker="o", color="tab:red")
    ax.set(title="Repeat error rate by cycle", xlabel="cycle", ylabel="retries repeating the last error (%)",
           ylim=(0, 100))
    ax.set_xticks(cyc)
    save(fig, "repeat_error_rate_by_cycle.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    counts: dict[str, int] = defaultdict(int)
    for s, n in rows[-1].metrics.final_signature_counts.items():
        counts[s] += n
    items = sorted(counts.items(), key=lambda kv: kv[1])[-12:]
    ax.barh([k for k, _ in items] or ["(no failures)"], [v for _, v in items] or [0], color="tab:orange")
    ax.set(title=f"Error signatures of failed koans (cycle {rows[-1].cycle})", xlabel="koans")
    save(fig, "error_distribution.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    fams = sorted({f for r in rows for f in r.metrics.per_family})
    first, last = rows[0].metrics.per_family, rows[-1].metrics.per_family
    xs = range(len(fams))
    ax.bar([x - 0.2 for x in xs], [first.get(f, {}).get("rate", 0) * 100 for f in fams], 0.4,
           label=f"cycle {rows[0].cycle}")
    ax.bar([x + 0.2 for x in xs], [last.get(f, {}).get("rate", 0) * 100 for f in fams], 0.4,
           label=f"cycle {rows[-1].cycle}")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(fams, rotation=15)
    ax.set(title="Pass rate by family: first vs latest cycle", ylabel="pass rate (%)", ylim=(0, 100))
    ax.legend()
    save(fig, "before_after_comparison.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for a in trained[-4:]:
        ax.plot([p["step"] for p in a.loss_curve], [p["loss"] for p in a.loss_curve], label=a.adapter_id)
    ax.set(title="Training loss", xlabel="step", ylabel="loss (reply tokens)")
    if trained:
        ax.legend(fontsize=8)
    save(fig, "loss_curve.png")
    return written
