"""docs/benchmarks.md and its plots, from `scenarios.Results`."""

from __future__ import annotations

import math
import os
import platform
from importlib import metadata
from pathlib import Path

from .scenarios import Plan, Results, median

SECTIONS = [
    ("1. `/bot` session start", "bot_"),
    ("2. Media path (Twilio echo calls)", ("ping_pong", "cpu_ms", "rtt_p", "lost_")),
    ("3. Capacity (one core)", "capacity_"),
    ("4. Memory", ("idle_rss", "rss_after")),
    ("5. Shutdown", ("idle_shutdown", "drain_")),
    ("6. Startup", "startup_"),
]


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return _fmt(values[0])
    return f"{_fmt(median(values))} ({_fmt(min(values))}–{_fmt(max(values))})"


OURS_NAME = "pipecat-base"
PEER_NAME = "peer-stack"

# The headline ratios, ours / the peer stack's medians: (line, metric).
HEADLINES = [
    ("cpu-ratio-media-10-calls-vs-peer-stack", "cpu_ms_per_call_s_pipecat_10"),
    ("cpu-ratio-media-1-call-vs-peer-stack", "cpu_ms_per_call_s_pipecat_1"),
    ("cpu-ratio-vad-10-calls-vs-peer-stack", "cpu_ms_per_call_s_vad_10"),
    ("bot-p50-ratio-vs-peer-stack", "bot_rtt_seq_p50_ms"),
    ("bot-cpu-ratio-c50-vs-peer-stack", "bot_cpu_ms_per_session_conc"),
]


def ratio(results: Results, metric: str, against: str = PEER_NAME) -> float:
    ours = median(results.values[metric].get(OURS_NAME, []))
    base = median(results.values[metric].get(against, []))
    return ours / base if base else float("nan")


def per_run_ratios(results: Results, metric: str, against: str = PEER_NAME) -> list[float]:
    """ours / the peer stack within each run: both servers were measured in the same run, each
    row back to back, so the machine's drift between runs mostly cancels out of these."""
    row = results.values[metric]
    ours, base = row.get(OURS_NAME, []), row.get(against, [])
    if len(ours) != len(base) or not all(base):
        return []
    return [o / b for o, b in zip(ours, base, strict=True)]


def others(results: Results) -> list[str]:
    """The servers compared with ours, the peer stack first."""
    names = {name for row in results.values.values() for name in row} - {OURS_NAME}
    return sorted(names, key=lambda name: (name != PEER_NAME, name))


def headlines(results: Results) -> list[str]:
    """``name: ratio`` lines, for the report's top and the command's output."""
    lines = []
    for line, metric in HEADLINES:
        if metric in results.values:
            lines.append(f"{line}: {ratio(results, metric):.2f}")
    return lines


def machine_line() -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in (
            "trio",
            "trio-asyncio",
            "hypercorn",
            "quart-trio",
            "pipecat-ai",
            "uvicorn",
            "uvloop",
            "httptools",
            "fastapi",
        )
    )
    return (f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
            f"{versions}")  # fmt: skip


def tables(results: Results) -> list[str]:
    columns = others(results)
    extra = [name for name in columns if name != PEER_NAME]
    header = ["metric", OURS_NAME, *columns, f"ours / {PEER_NAME}", "per run",
              *[f"ours / {name}" for name in extra]]  # fmt: skip
    lines: list[str] = []
    for title, prefixes in SECTIONS:
        metrics = [m for m in results.values if m.startswith(prefixes)]
        if not metrics:
            continue
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]  # fmt: skip
        for metric in metrics:
            row = results.values[metric]
            cells = [f"`{metric}`", _cell(row.get(OURS_NAME, []))]
            cells += [_cell(row.get(name, [])) for name in columns]
            cells += [_fmt(ratio(results, metric)), _cell(per_run_ratios(results, metric))]
            cells += [_fmt(ratio(results, metric, name)) for name in extra]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plots(results: Results, plan: Plan, img_dir: Path) -> list[str]:
    """PNG plots; returns their paths relative to the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    made = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, samples in results.rtt_samples.items():
        ordered = sorted(samples)
        if ordered:
            ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=name)
    ax.set(xlabel="frame round trip (ms)", ylabel="fraction of frames",
           title="Frame RTT, pipecat echo, 10 calls")  # fmt: skip
    ax.legend()
    fig.savefig(img_dir / "rtt.png", dpi=100, bbox_inches="tight")
    made.append("rtt.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in plan.media_modes:
        for name in (OURS_NAME, *others(results)):
            ys = [median(results.values[f"cpu_ms_per_call_s_{mode}_{n}"].get(name, []))
                  for n in plan.media_loads]  # fmt: skip
            ax.plot(plan.media_loads, ys, marker="o", label=f"{name} / {mode}")
    ax.set(xlabel="concurrent calls", ylabel="server CPU ms per call-second",
           title="Media path CPU")  # fmt: skip
    ax.legend(fontsize=7)
    fig.savefig(img_dir / "cpu.png", dpi=100, bbox_inches="tight")
    made.append("cpu.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    marks = [0, *plan.memory_marks]
    for name in (OURS_NAME, *others(results)):
        after = [f"rss_after_{m}_sessions_mib" for m in plan.memory_marks]
        ys = [median(results.values[k].get(name, [])) for k in ["idle_rss_mib", *after]]
        ax.plot(marks, ys, marker="o", label=name)
    ax.set(xlabel="sequential sessions", ylabel="RSS (MiB)", title="Memory")
    ax.legend()
    fig.savefig(img_dir / "rss.png", dpi=100, bbox_inches="tight")
    made.append("rss.png")
    plt.close("all")
    return made


def write(results: Results, plan: Plan, out: Path, img_dir: Path, command: str, notes: str) -> None:
    images = plots(results, plan, img_dir)
    rel = os.path.relpath(img_dir, out.parent)
    top = headlines(results)
    body = [
        "# Benchmarks",
        "",
        "pipecat-base (Hypercorn + Quart-Trio + trio-asyncio) against the peer stack: the",
        "existing image's FastAPI on uvicorn with uvloop, httptools and websockets (what its",
        "`fastapi[standard]` lock installs), serving `/bot` and `/ws` the way that image does,",
        "with the same bot file (`bench/bots/bench_bot.py`), row by row in the same run, on",
        "127.0.0.1.",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {machine_line()}. Runs: {plan.runs} (median, with min–max when more than one).",
        "",
        *top,
        "",
        *tables(results),
        *[f"![{name}]({rel}/{name})" for name in images],
        "",
        notes,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(body).rstrip() + "\n")
    for line in top:
        print(line)
