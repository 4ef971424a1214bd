#!/usr/bin/env python3
"""The README's performance table in one interleaved run: chargpt's backends against the PyTorch
reference at each of its settings, per preset.

usage: /usr/bin/python3 scripts/bench/bench_table.py [--presets baby,nanogpt] [--rounds 3] [--threads N]
                                               [--torch-threads 1,2] [--torch-bf16 auto|on|off]
                                               [--markdown FILE]

Each round runs, for every preset, every chargpt setting and then every PyTorch setting, one after
the other, so that the machine's drift lands on all of them alike; each run reports the median of its
own timed steps, and the table gives the median over rounds (and the range).

chargpt settings: fp32 on OpenBLAS, fp32 on oneDNN and bf16 on oneDNN (AMX). A setting this build or
CPU cannot run (no oneDNN compiled in; no AMX for bf16) is listed as skipped with the reason, never
silently left out. PyTorch (scripts/reference/torch_gpt_ref.py, same model and recipe, /usr/bin/python3 with
Debian's python3-torch, OPENBLAS_NUM_THREADS=1) runs at every --torch-threads count in fp32 and, where
the CPU has bf16 hardware (AMX or AVX512-BF16; --torch-bf16 auto), with bf16 autocast; the ratio column
divides PyTorch's best (lowest) median by each chargpt median, so above 1 is chargpt faster.

MFU is chargpt's own: the median model FLOP rate over the best product rate the bench measured itself
in any round, on the same backend and precision (1024^3 products, one single-threaded product per thread).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Timed and warmup steps per preset: a nanogpt step is seconds long.
STEPS = {"baby": (20, 3), "nanogpt": (2, 1)}
TORCH_SHAPE = {"baby": ["-L", "4", "-H", "4", "-C", "128", "-T", "64", "-B", "12"],
               "nanogpt": ["-L", "6", "-H", "6", "-C", "384", "-T", "256", "-B", "64"]}
SETTINGS = [("openblas", "fp32"), ("onednn", "fp32"), ("onednn", "bf16")]


def fail(msg):
    print(f"bench_table: {msg}", file=sys.stderr)
    sys.exit(1)


def run_json(cmd, env=None):
    """Runs cmd and returns the last line of its stdout parsed as JSON; stops on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        fail(f"failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    lines = p.stdout.strip().splitlines()
    if not lines:
        fail(f"no output from: {' '.join(cmd)}")
    return json.loads(lines[-1]) if lines[-1].startswith("{") else json.loads(p.stdout)


def field(text, key, default=""):
    """The value after 'key:' on the first line of text that starts with it (/proc/cpuinfo, chargpt info)."""
    return next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith(key)), default)


def read_cpuinfo():
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


def skip_reason(info, backend, precision):
    """Why this build or CPU cannot run a setting, or None."""
    backends = field(info, "backends:")
    if backend not in backends.split(", "):
        return f"{backend} not compiled in (backends: {backends or 'none listed'})"
    if precision == "bf16" and "amx_bf16 yes" not in info:
        return "no AMX on this CPU (chargpt refuses --precision bf16 without it)"
    return None


def fmt_range(xs, digits):
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="baby,nanogpt", help="comma list of chargpt presets (baby, nanogpt)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="chargpt's threads (default: all cores)")
    ap.add_argument("--torch-threads", default=None,
                    help="PyTorch thread counts to try (default: 1 and all cores); its best counts")
    ap.add_argument("--torch-bf16", choices=["auto", "on", "off"], default="auto",
                    help="also run PyTorch with bf16 autocast (auto: where the CPU has AMX or AVX512-BF16)")
    ap.add_argument("--chargpt", default=os.path.join(ROOT, "build", "chargpt"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "tinyshakespeare.txt"))
    ap.add_argument("--markdown", help="also write the table to this file")
    a = ap.parse_args()

    presets = [p for p in a.presets.split(",") if p]
    for p in presets:
        if p not in STEPS:
            fail(f"--presets: '{p}' is not one of: {', '.join(STEPS)}")
    if a.rounds < 1 or a.threads < 1:
        fail("--rounds and --threads must be at least 1")
    torch_threads = sorted({int(t) for t in a.torch_threads.split(",")} if a.torch_threads
                           else {1, os.cpu_count() or 1})
    if not os.access(a.chargpt, os.X_OK):
        fail(f"no chargpt binary at '{a.chargpt}' (build it: scripts/build.sh)")
    if not os.path.isfile(a.data):
        fail(f"no data file at '{a.data}' (scripts/fetch_data.sh)")
    py = "/usr/bin/python3"
    if subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0:
        fail(f"{py} cannot import torch (sudo apt-get install -y python3-torch)")
    cpuinfo = read_cpuinfo()
    flags = set(field(cpuinfo, "flags").split())
    torch_bf16 = {"on": True, "off": False}.get(a.torch_bf16, bool(flags & {"amx_bf16", "avx512_bf16"}))

    info = subprocess.run([a.chargpt, "info"], capture_output=True, text=True).stdout
    ours = [(b, p, skip_reason(info, b, p)) for b, p in SETTINGS]
    theirs = [(t, bf) for t in torch_threads for bf in ([False, True] if torch_bf16 else [False])]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    peer = os.path.join(ROOT, "scripts", "reference", "torch_gpt_ref.py")

    res = {}  # (preset, side, setting) -> list of dicts per round
    load_before = open("/proc/loadavg").read().split()[:3]
    t_start = time.time()
    for r in range(1, a.rounds + 1):
        for preset in presets:
            steps, warmup = STEPS[preset]
            for b, p, why in ours:
                if why:
                    continue
                j = run_json([a.chargpt, "bench", "--data", a.data, "--preset", preset, "--threads", str(a.threads),
                              "--steps", str(steps), "--warmup", str(warmup), "--rounds", "1", "--json", "-q",
                              "--backend", b, "--precision", p], env)
                row = j["rows"][0]
                res.setdefault((preset, "chargpt", f"{p} {b}"), []).append(
                    {"ms": row["ms_median"], "loss": row["loss_last"], "mfu": row["mfu"],
                     "model": row["model_flops_per_s"] / 1e9, "rate": row["sgemm_flops_per_s"] / 1e9,
                     "others": row["other_cpu_frac"]})
                print(f"round {r} {preset:8s} chargpt {p} {b:9s} {a.threads} thr: {row['ms_median']:10.1f} ms"
                      f"  loss {row['loss_last']:.4f}  MFU {row['mfu']:.2f}", file=sys.stderr, flush=True)
            for t, bf in theirs:
                cmd = [py, peer, "bench", "--data", a.data, "--threads", str(t), "--steps", str(steps),
                       "--warmup", str(warmup)] + TORCH_SHAPE[preset] + (["--bf16"] if bf else [])
                j = run_json(cmd, env)
                name = f"{'bf16 autocast' if bf else 'fp32'}, {t} thr"
                res.setdefault((preset, "pytorch", name), []).append({"ms": j["ms_per_step"], "loss": j["loss"]})
                print(f"round {r} {preset:8s} pytorch {name:22s}: {j['ms_per_step']:10.1f} ms  loss {j['loss']:.4f}",
                      file=sys.stderr, flush=True)
    load_after = open("/proc/loadavg").read().split()[:3]

    out = []
    isa = field(info, "cpu:", "?")
    blas = field(info, "blas:", "?").split("(core", 1)[-1].rstrip(")").strip()
    model = field(cpuinfo, "model name", platform.processor() or "unknown CPU")
    out.append(f"{model} ({isa}; OpenBLAS kernels {blas}), {os.cpu_count()} hardware threads; "
               f"chargpt {a.threads} threads; "
               f"{a.rounds} interleaved rounds; load average before {' '.join(load_before)}, after "
               f"{' '.join(load_after)}; {time.time() - t_start:.0f} s")
    out.append(f"command: /usr/bin/python3 scripts/bench/bench_table.py {' '.join(sys.argv[1:])}".rstrip())
    out.append("")
    out.append("| preset | side | setting | ms/step, median (range) | loss | MFU (product rate, GFLOP/s) "
               "| PyTorch's best / this |")
    out.append("|---|---|---|---|---|---|---|")
    for preset in presets:
        steps, warmup = STEPS[preset]
        torch_rows = {k[2]: v for k, v in res.items() if k[0] == preset and k[1] == "pytorch"}
        best_name = min(torch_rows, key=lambda n: statistics.median(x["ms"] for x in torch_rows[n]))
        best = statistics.median(x["ms"] for x in torch_rows[best_name])
        for b, p, why in ours:
            key = (preset, "chargpt", f"{p} {b}")
            if why:
                out.append(f"| {preset} | chargpt | {p} {b} | skipped: {why} | | | |")
                continue
            rows = res[key]
            ms = [x["ms"] for x in rows]
            # Against the best product rate of all rounds (as the bench takes the best sample): one
            # disturbed rate sample would otherwise show an MFU above 1.
            rate = max(x["rate"] for x in rows)
            mfu = statistics.median(x["model"] for x in rows) / rate
            out.append(f"| {preset} | chargpt | {p} {b}, {a.threads} thr | {fmt_range(ms, 1)} | "
                       f"{rows[-1]['loss']:.4f} | {mfu:.2f} ({rate:.0f}) | **{best / statistics.median(ms):.2f}×** |")
        for name, rows in torch_rows.items():
            ms = [x["ms"] for x in rows]
            mark = " (best)" if name == best_name else ""
            out.append(f"| {preset} | PyTorch | {name}{mark} | {fmt_range(ms, 1)} | {rows[-1]['loss']:.4f} | | "
                       f"{best / statistics.median(ms):.2f}× |")
        if not torch_bf16:
            out.append(f"| {preset} | PyTorch | bf16 autocast | skipped: no AMX or AVX512-BF16 on this CPU "
                       f"(--torch-bf16 on to force) | | | |")
    out.append("")
    out.append(f"Steps per run (timed + warmup): " + ", ".join(f"{p} {STEPS[p][0]} + {STEPS[p][1]}" for p in presets)
               + ". chargpt's loss: mean of its last 5 steps at a constant lr 1e-3; PyTorch's: its last step's.")
    text = "\n".join(out)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
