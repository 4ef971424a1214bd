#!/usr/bin/python3
"""Plot train/val loss from a `chargpt train --log FILE` JSON Lines log.

usage: /usr/bin/python3 scripts/plots/plot_loss.py TRAIN.jsonl OUT.png [--title TEXT]

Reads {"type":"step","step","loss",...} lines (the batch loss of logged
steps, drawn thin) and {"type":"eval","step","train_loss","val_loss"} lines
(loss estimates, drawn with markers). A resumed run appends to the same log;
where a step appears more than once, the last line wins.

Needs Debian's matplotlib:  sudo apt-get install -y python3-matplotlib
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path):
    steps, evals = {}, {}
    bad = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                o = json.loads(line)
                kind = o.get("type")
                if kind == "step":
                    steps[int(o["step"])] = float(o["loss"])
                elif kind == "eval":
                    evals[int(o["step"])] = (float(o["train_loss"]), float(o["val_loss"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
                if bad <= 3:
                    print(f"{path}:{n}: skipping a line that is not a chargpt log object", file=sys.stderr)
    if bad > 3:
        print(f"{path}: skipped {bad} lines in all", file=sys.stderr)
    return sorted(steps.items()), sorted(evals.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log")
    ap.add_argument("png")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    steps, evals = read_log(a.log)
    if not steps and not evals:
        sys.exit(f"{a.log}: no step or eval lines")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if steps:
        ax.plot([s for s, _ in steps], [l for _, l in steps], "-", lw=0.8, alpha=0.5, color="C0",
                label="batch loss (logged steps)")
    if evals:
        es = [s for s, _ in evals]
        ax.plot(es, [t for _, (t, _) in evals], "o-", color="C0", ms=4, label="train loss (estimate)")
        ax.plot(es, [v for _, (_, v) in evals], "s-", color="C3", ms=4, label="val loss (estimate)")
        finite = [(s, v) for s, (_, v) in evals if math.isfinite(v)]
        if finite:
            s_best, v_best = min(finite, key=lambda p: p[1])
            ax.annotate(f"best val {v_best:.4f} @ {s_best}", (s_best, v_best), textcoords="offset points",
                        xytext=(-10, 12), ha="right", fontsize=8, color="C3")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    # The file's name only: a full path would put this machine's directories into the image.
    ax.set_title(a.title or f"chargpt training loss ({os.path.basename(a.log)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
