#!/usr/bin/python3
"""Plot core-count scaling from `chargpt bench --csv FILE`.

usage: /usr/bin/python3 scripts/plots/plot_scaling.py BENCH.csv OUT.png [--title TEXT]

Left panel: speedup over the smallest thread count measured, with the ideal
(linear) line. Right panel: parallel efficiency (speedup / ideal speedup).
Oversubscribed rows (more threads than hardware threads) are drawn hollow.

Needs Debian's matplotlib:  sudo apt-get install -y python3-matplotlib
"""
import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def mark(ax, rows, ys, color, fmt):
    """One marker per setting (hollow where oversubscribed), labelled with its value."""
    for r, y in zip(rows, ys):
        ax.plot(r["threads"], y, "o", color=color, mfc="white" if r["over"] else color, ms=7)
        ax.annotate(fmt.format(y), (r["threads"], y), textcoords="offset points", xytext=(5, -12), fontsize=8)


def read_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"threads", "speedup", "efficiency", "ms_median", "ms_mad"}
    if not rows:
        sys.exit(f"{path}: no data rows")
    missing = need - set(rows[0])
    if missing:
        sys.exit(f"{path}: not a chargpt bench CSV (missing columns: {', '.join(sorted(missing))})")
    out = []
    for r in rows:
        out.append({
            "threads": int(r["threads"]),
            "speedup": float(r["speedup"]),
            "efficiency": float(r["efficiency"]),
            "ms": float(r["ms_median"]),
            "mad": float(r["ms_mad"]),
            "over": r.get("oversubscribed", "0") == "1",
        })
    out.sort(key=lambda r: r["threads"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    rows = read_rows(a.csv)
    base = rows[0]["threads"]
    t = [r["threads"] for r in rows]
    # speedup spread from the per-step spread (scaled MAD), propagated to a ratio: a
    # rough one-step band, not a confidence interval of the median
    s = [r["speedup"] for r in rows]
    s_err = [0.0] + [r["speedup"] * ((rows[0]["mad"] / rows[0]["ms"]) ** 2 + (r["mad"] / r["ms"]) ** 2) ** 0.5
                     for r in rows[1:]]
    e = [100 * r["efficiency"] for r in rows]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    tmax = max(t)
    ideal_t = [base, tmax] if tmax > base else [base, base * 2]
    ax1.plot(ideal_t, [x / base for x in ideal_t], "--", color="gray", label="ideal (linear)")
    ax1.errorbar(t, s, yerr=s_err, fmt="-", color="C0", capsize=3, label="measured (bars: one-step spread)")
    mark(ax1, rows, s, "C0", "{:.2f}")
    ax1.set_xlabel("threads")
    ax1.set_ylabel(f"speedup over {base} thread{'s' if base > 1 else ''}")
    ax1.set_xticks(t)
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)

    ax2.axhline(100, ls="--", color="gray", label="ideal")
    ax2.plot(t, e, "-", color="C1")
    mark(ax2, rows, e, "C1", "{:.0f}%")
    ax2.set_xlabel("threads")
    ax2.set_ylabel("parallel efficiency (%)")
    ax2.set_xticks(t)
    ax2.set_ylim(0, max(110, max(e) + 10))
    ax2.grid(alpha=0.3)
    over = [r["threads"] for r in rows if r["over"]]
    if over:  # shade the oversubscribed range: threads share cores there
        ax2.plot([], [], "o", color="gray", mfc="white", label="oversubscribed")
        inside = [r["threads"] for r in rows if not r["over"]]
        lo = max(inside) if inside else min(over)
        for ax in (ax1, ax2):
            ax.axvspan(lo, max(over), color="gray", alpha=0.12, lw=0)
        ax1.plot([], [], "s", color="gray", alpha=0.3, label="more threads than cores")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower left", fontsize=8)
    if tmax / base >= 8:
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_xticks(t)
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    title = a.title or (f"chargpt core-count scaling ({os.path.basename(a.csv)}); "
                        f"{rows[0]['ms']:.1f} ms/step at {base} thread{'s' if base > 1 else ''}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
