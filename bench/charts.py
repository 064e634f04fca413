"""Charts of the benchmark results: `python -m bench.charts` redraws both from the JSON beside the tables.

`make bench` (bench/run.py) writes bench/results/latest.json next to
latest.md, `make bench-scale` (bench/scale.py) writes scale.json next to
scale.md, and each then calls this module, so a chart always shows the
figures of its table. Redrawing needs no benchmark run:

    python -m bench.charts                      # bench/results/*.json -> *.png
    python -m bench.charts --results DIR        # another directory

- throughput.png: each RPC's req/s as a share of its two ceilings (the bare
  grpcio echo server and the raw-sqlite3 server with as many processes), per
  backend and worker configuration, with issue 9's targets marked;
- scale.png: the cost of one call (or one 100-row page) on the smallest and
  the largest book, per RPC and per backend.

matplotlib (a dev dependency) draws with its Agg backend: no display needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
THROUGHPUT_JSON, THROUGHPUT_PNG = "latest.json", "throughput.png"
SCALE_JSON, SCALE_PNG = "scale.json", "scale.png"

# The order the tables use; methods a run did not measure are left out.
METHOD_ORDER = ("CreateLoan", "MakePayment", "GetDelinquencyStatus", "GetOutstanding", "GetSchedule", "Login")
CONFIG_COLOURS = {"sqlite-1w": "#9ecae1", "sqlite-2w": "#3182bd", "postgres-2w": "#e6550d"}
READS = ("GetDelinquencyStatus", "GetOutstanding")

# Issue 9, item 7: (ceiling, method, configuration) -> the least share of the ceiling's req/s.
# MakePayment's is against SQLite's own ceiling, so it binds the SQLite configurations.
TARGETS = {
    **{("echo", method, "sqlite-2w"): 0.60 for method in READS},
    **{("echo", method, "sqlite-1w"): 0.55 for method in READS},
    **{("echo", method, "postgres-2w"): 0.45 for method in READS},
    ("raw", "MakePayment", "sqlite-1w"): 0.65,
    ("raw", "MakePayment", "sqlite-2w"): 0.65,
}
CEILING_LABELS = {"echo": "echo ceiling (bare grpcio)", "raw": "raw-sqlite3 ceiling"}


def ceilings_of(server: str) -> dict[str, str]:
    """The ceiling servers a lending-grpc configuration is compared with: same number of processes."""
    workers = server.rsplit("-", 1)[1].rstrip("w")
    return {"echo": f"echo-{workers}p", "raw": f"raw-sqlite-{workers}p"}


def share(cells: dict, server: str, method: str, streams: int, ceiling: str) -> float | None:
    """req/s of ``server`` over its ``ceiling``'s in the same cell; None when either is missing or too thin.

    A cell with fewer than 20 calls (a slow Login) is no figure to divide by;
    results parsed from an old table carry no call count and are taken as they are.
    """
    ours = cells.get((server, method, streams))
    theirs = cells.get((ceilings_of(server)[ceiling], method, streams))
    if not ours or not theirs or not theirs["rps"] or theirs.get("requests", 20) < 20:
        return None
    return ours["rps"] / theirs["rps"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _count(number: int | None, noun: str) -> str:
    return f"? {noun}s" if number is None else f"{number:,} {noun}{'' if number == 1 else 's'}"


def _heading(fig, title: str, subtitle: str, handles: list, labels: list) -> float:
    """Title, wrapped subtitle and legend above the panels, placed in inches from the top.

    Returns the top of the panels' area (a figure fraction) for tight_layout.
    """
    inch = 1 / fig.get_figheight()
    fig.suptitle(title, x=0.01, y=1 - 0.12 * inch, ha="left", va="top", fontsize=13, fontweight="bold")
    text = textwrap.fill(subtitle, width=int(fig.get_figwidth() * 15))
    lines = text.count("\n") + 1
    fig.text(0.01, 1 - 0.45 * inch, text, fontsize=8.5, color="#444444", va="top")
    legend_top = 1 - (0.55 + 0.16 * lines) * inch
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.005, legend_top), ncol=len(handles),
               frameon=False, fontsize=9)  # fmt: skip
    return legend_top - 0.3 * inch


def _save(plt, fig, path: Path, top: float) -> Path:
    """Lay the panels out below ``top`` (from `_heading`), write the PNG and free the figure."""
    fig.tight_layout(rect=(0, 0, 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label_bar(ax, bar, value: float | None, colour: str | None) -> None:
    """The share in figures, at the foot of the bar, where no target mark can cover it."""
    x = bar.get_x() + bar.get_width() / 2
    if value is None or value * 100 < 8:
        text = "n/a" if value is None else f"{value * 100:.0f}"
        ax.annotate(text, (x, bar.get_height()), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7)  # fmt: skip
        return
    dark = colour is not None and colour not in ("#9ecae1",)
    ax.text(x, 1.5, f"{value * 100:.0f}", ha="center", va="bottom", fontsize=7,
            color="white" if dark else "black")  # fmt: skip


def throughput_chart(data: dict, path: Path) -> Path:
    """Draw ``data`` (latest.json): bars of shares of the ceilings, a panel per ceiling and streams."""
    plt = _pyplot()
    cells = {(c["server"], c["method"], c["streams"]): c for c in data["cells"]}
    configs = list(dict.fromkeys(c["server"] for c in data["cells"] if c["kind"] == "lending"))
    measured = {c["method"] for c in data["cells"]}
    methods = [m for m in METHOD_ORDER if m in measured] + sorted(measured - set(METHOD_ORDER))
    streams_list = sorted({c["streams"] for c in data["cells"]})
    fig, axes = plt.subplots(
        2, len(streams_list), figsize=(max(7.5 * len(streams_list), 11), 10.5), squeeze=False, sharey="row"
    )
    width = 0.8 / max(len(configs), 1)
    shown = [
        share(cells, config, method, streams, ceiling)
        for config in configs
        for method in methods
        for streams in streams_list
        for ceiling in ("echo", "raw")
    ]
    for row, ceiling in enumerate(("echo", "raw")):
        for col, streams in enumerate(streams_list):
            ax = axes[row][col]
            for i, config in enumerate(configs):
                xs = [m + (i - (len(configs) - 1) / 2) * width for m in range(len(methods))]
                values = [share(cells, config, method, streams, ceiling) for method in methods]
                heights = [0 if v is None else v * 100 for v in values]
                bars = ax.bar(
                    xs, heights, width * 0.92, label=config, color=CONFIG_COLOURS.get(config), zorder=2
                )
                for bar, value in zip(bars, values, strict=True):
                    _label_bar(ax, bar, value, CONFIG_COLOURS.get(config))
                for x, method in zip(xs, methods, strict=True):
                    target = TARGETS.get((ceiling, method, config))
                    if target is None:
                        continue
                    ax.hlines(
                        target * 100, x - width / 2, x + width / 2, colors="black", linewidths=2.2, zorder=3
                    )
                    ax.annotate(
                        f"{target:.0%}",
                        (x, target * 100),
                        xytext=(0, 3),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        fontweight="bold",
                    )
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels(methods, rotation=20, ha="right")
            ax.set_ylim(0, max(110, *(v * 100 + 8 for v in shown if v is not None)))
            ax.yaxis.set_major_formatter(lambda value, _: f"{value:.0f}%")
            ax.axhline(100, color="grey", linewidth=0.8, linestyle=":", zorder=1)
            ax.grid(axis="y", alpha=0.3, zorder=0)
            ax.set_title(f"{streams} concurrent streams: share of the {CEILING_LABELS[ceiling]}", fontsize=11)
            if col == 0:
                ax.set_ylabel(f"lending-grpc req/s as % of {CEILING_LABELS[ceiling]}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], color="black", linewidth=2.2))
    labels.append("target (issue 9): at least this share")
    subtitle = f"make bench, {data.get('date', '?')}; {data.get('machine', '')}"
    load = data.get("load_average")
    if load:
        subtitle += f"; load average {load['start']:.1f} at the start, {load['end']:.1f} at the end"
    subtitle += ". Ceilings run with as many processes as the configuration (1w: 1, 2w: 2)."
    top = _heading(
        fig,
        "lending-grpc throughput as a share of its ceilings (higher is better)",
        subtitle,
        handles,
        labels,
    )
    return _save(plt, fig, path, top)


def scale_chart(data: dict, path: Path) -> Path:
    """Draw ``data`` (scale.json): per-call cost on the smallest and largest book, one panel per backend."""
    plt = _pyplot()
    from matplotlib import ticker

    sizes = data["sizes"]
    small, large = str(sizes[0]), str(sizes[-1])
    backends = data["backends"]
    ops = list(next(iter(backends.values()))["median"][small])
    fig, axes = plt.subplots(
        1,
        len(backends),
        figsize=(max(11, 8 * len(backends)), 2.2 + 0.6 * len(ops)),
        squeeze=False,
        sharey=True,
    )
    colours = {small: "#9ecae1", large: "#08519c"}
    height = 0.38
    for ax, (backend, result) in zip(axes[0], backends.items(), strict=True):
        spread = result.get("spread", {})
        for j, size in enumerate((small, large)):
            ys = [i + (j - 0.5) * height for i in range(len(ops))]
            medians = [result["median"][size].get(op) or 0 for op in ops]
            lows = [spread.get(size, {}).get(op, (m, m))[0] for op, m in zip(ops, medians, strict=True)]
            highs = [spread.get(size, {}).get(op, (m, m))[1] for op, m in zip(ops, medians, strict=True)]
            ax.barh(
                ys,
                medians,
                height * 0.92,
                xerr=[
                    [max(m - lo, 0) for m, lo in zip(medians, lows, strict=True)],
                    [max(hi - m, 0) for m, hi in zip(medians, highs, strict=True)],
                ],
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#555555"},
                color=colours[size],
                label=f"{int(size):,} loans",
                zorder=2,
            )
        # The ratio in a column of its own, right of the panel: it never lands on a bar or whisker.
        ax.annotate(
            f"{int(large):,} / {int(small):,}",
            xy=(1.0, -0.75),
            xycoords=("axes fraction", "data"),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color="#444444",
        )
        for i, op in enumerate(ops):
            a, b = result["median"][small].get(op), result["median"][large].get(op)
            if not (a and b):
                continue
            ratio = b / a
            ax.annotate(
                f"×{ratio:.2f}",
                xy=(1.0, i),
                xycoords=("axes fraction", "data"),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
                color="#c0392b" if ratio > 1.5 else "#222222",
                fontweight="bold" if ratio > 1.5 else "normal",
            )
        values = [v for size in (small, large) for v in result["median"][size].values() if v]
        values += [v for size in spread.values() for pair in size.values() for v in pair if v]
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 1.6, max(values) * 1.6)
        # 20, 50, 100, 200, ... read better than powers of ten on a span of two decades.
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_yticks(range(len(ops)))
        ax.set_yticklabels(ops, fontsize=9)
        ax.set_ylim(len(ops) - 0.5, -1.1)  # top to bottom in the table's order, room for the ratio heading
        ax.grid(axis="x", which="both", alpha=0.25, zorder=0)
        ax.set_xlabel("microseconds per call (per 100-row page for ListDelinquentLoans), log scale")
        ax.set_title(backend, fontsize=11)
    handles, labels = axes[0][0].get_legend_handles_labels()
    top = _heading(
        fig,
        f"Cost of one call on a {int(small):,}-loan and a {int(large):,}-loan book (shorter is better)",
        f"make bench-scale, {data.get('date', '?')}: the core call and its protobuf conversion in process,"
        f" below gRPC. Bars: median of {_count(data.get('blocks'), 'block')} of"
        f" {_count(data.get('calls'), 'call')};"
        " whiskers: the lowest and highest block. Right: the large book's cost over the small one's, in red"
        " where it is more than ×1.5.",
        handles,
        labels,
    )
    return _save(plt, fig, path, top)


def draw(results: Path = RESULTS) -> list[Path]:
    """Redraw every chart whose JSON is in ``results``; the PNGs drawn."""
    drawn = []
    for source, target, chart in (
        (THROUGHPUT_JSON, THROUGHPUT_PNG, throughput_chart),
        (SCALE_JSON, SCALE_PNG, scale_chart),
    ):
        if (results / source).exists():
            drawn.append(chart(json.loads((results / source).read_text()), results / target))
    return drawn


def draw_quietly(chart, data: dict, path: Path) -> None:
    """For the benchmark scripts: draw, or say on stderr why not (matplotlib missing) and go on."""
    try:
        chart(data, path)
    except ImportError as exc:
        print(f"no chart {path.name}: {exc} (pip install -e '.[dev]')", file=sys.stderr)
        return
    print(f"drew {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.charts`: redraw throughput.png and scale.png from the JSON results."""
    parser = argparse.ArgumentParser(prog="python -m bench.charts", description=main.__doc__)
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"directory of latest.json and scale.json ({RESULTS})"
    )
    args = parser.parse_args(argv)
    drawn = draw(args.results)
    if not drawn:
        print(f"no {THROUGHPUT_JSON} or {SCALE_JSON} in {args.results}", file=sys.stderr)
        return 1
    for path in drawn:
        print(f"drew {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
