#!/usr/bin/env python3
"""The performance table for this CPU in one interleaved run: chargpt's default and each of its backends
against the PyTorch reference at its best settings, per preset; markdown (for docs/performance.md) and CSV.

usage: python3 scripts/bench/bench_table.py [--presets baby,nanogpt] [--rounds 3] [--threads N]
                                            [--steps baby=20+3,nanogpt=2+1] [--torch-compile both|on|off]
                                            [--torch-bf16 auto|on|off] [--markdown FILE] [--csv FILE]

Each round runs, for every preset, every chargpt setting and then every PyTorch setting, one after the
other, so that drift in the machine's speed lands on all of them alike; each run reports the median of
its own timed steps (after untimed warmup steps), and the table gives the median over rounds (and the
range). Run it on an otherwise idle machine.

chargpt (build/chargpt bench): the default (`--backend auto` where the binary has it, else no --backend
flag; the row names what it chose), fp32 on OpenBLAS, fp32 on oneDNN and bf16 on oneDNN. A setting the
build lacks is listed as skipped; one that chargpt refuses in the first round (e.g. bf16 on a CPU without
bf16 instructions) is listed as skipped with chargpt's own message, never silently left out.

PyTorch (scripts/reference/torch_gpt_ref.py: same model and recipe, the Python from
scripts/reference/torch_python.sh, i.e. the current PyTorch that scripts/setup_torch_peer.sh installs):
the same thread count as chargpt, fp32 and, where the CPU has bf16 instructions (AVX512-BF16 or AMX;
--torch-bf16 auto), bf16 autocast; each eager and torch.compile'd (--torch-compile both); fused attention
and AdamW. PyTorch's best is its lowest median; the ratio column divides it by each row's median, so
above 1 is faster than PyTorch's best.

MFU: model FLOPs per step (chargpt's count) per second, over the best product rate chargpt's bench
measured in any round on the same backend and precision (one single-threaded 1024^3 product per thread).
PyTorch's rows use the best rate chargpt measured at the same precision on any backend. Loss: the mean
of the last 5 steps at a constant lr 1e-3, both sides (after so few steps it checks that a run trains, not
which trains better: scripts/bench/time_to_quality.sh does that).
"""
import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from cpu_name import cpu_description  # noqa: E402

# Timed and warmup steps per preset: a nanogpt step is seconds long.
STEPS = {"baby": (20, 3), "nanogpt": (2, 1)}
TORCH_SHAPE = {"baby": ["-L", "4", "-H", "4", "-C", "128", "-T", "64", "-B", "12"],
               "nanogpt": ["-L", "6", "-H", "6", "-C", "384", "-T", "256", "-B", "64"]}
OURS = [("default", None, None), ("openblas fp32", "openblas", "fp32"), ("onednn fp32", "onednn", "fp32"),
        ("onednn bf16", "onednn", "bf16")]


def fail(msg):
    print(f"bench_table: {msg}", file=sys.stderr)
    sys.exit(1)


def run_json(cmd, env, may_refuse=False):
    """Runs cmd; returns (the last stdout line as JSON, None), or (None, why) when may_refuse and it failed."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        why = next((l.strip() for l in reversed(p.stderr.splitlines()) if l.strip()), f"exit {p.returncode}")
        if may_refuse:
            return None, why
        fail(f"failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr.strip()}")
    lines = p.stdout.strip().splitlines()
    if not lines:
        fail(f"no output from: {' '.join(cmd)}")
    return (json.loads(lines[-1]) if lines[-1].startswith("{") else json.loads(p.stdout)), None


def field(text, key, default=""):
    """The value after 'key:' on the first line of text that starts with it (chargpt info)."""
    return next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.strip().startswith(key)), default)


def parse_steps(spec):
    steps = dict(STEPS)
    for item in filter(None, (spec or "").split(",")):
        try:
            name, v = item.split("=")
            timed, warm = (v.split("+") + ["0"])[:2]
            steps[name] = (int(timed), int(warm))
        except ValueError:
            fail(f"--steps: '{item}' is not PRESET=TIMED+WARMUP (e.g. baby=20+3)")
        if steps[name][0] < 1 or steps[name][1] < 0:
            fail(f"--steps: '{item}' needs at least 1 timed step")
    return steps


def fmt_range(xs, digits):
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:,.{digits}f}".replace(",", " ")
    return (f"{m:,.{digits}f} ({min(xs):,.{digits}f}–{max(xs):,.{digits}f})").replace(",", " ")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="baby,nanogpt", help="comma list of chargpt presets (baby, nanogpt)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for both sides (default: all hardware threads, chargpt's default)")
    ap.add_argument("--torch-threads", help="PyTorch's thread counts, a comma list (default: --threads); "
                    "its best counts")
    ap.add_argument("--steps", help="timed+warmup steps per preset, e.g. baby=20+3,nanogpt=2+1 (the default)")
    ap.add_argument("--torch-compile", choices=["both", "on", "off"], default="both",
                    help="PyTorch eager, torch.compile'd, or both (a compile that fails runs eager, and says so)")
    ap.add_argument("--torch-bf16", choices=["auto", "on", "off"], default="auto",
                    help="also run PyTorch with bf16 autocast (auto: where the CPU has AMX or AVX512-BF16)")
    ap.add_argument("--chargpt", default=os.path.join(ROOT, "build", "chargpt"))
    ap.add_argument("--python", help="the PyTorch peer's Python (default: scripts/reference/torch_python.sh's)")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "tinyshakespeare.txt"))
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--csv", help="also write the rows as CSV to this file")
    a = ap.parse_args()

    steps_of = parse_steps(a.steps)
    presets = [p for p in a.presets.split(",") if p]
    for p in presets:
        if p not in TORCH_SHAPE:
            fail(f"--presets: '{p}' is not one of: {', '.join(TORCH_SHAPE)}")
    if a.rounds < 1 or a.threads < 1:
        fail("--rounds and --threads must be at least 1")
    if not os.access(a.chargpt, os.X_OK):
        fail(f"no chargpt binary at '{a.chargpt}' (build it: scripts/build.sh)")
    if not os.path.isfile(a.data):
        fail(f"no data file at '{a.data}' (scripts/fetch_data.sh)")
    py = a.python
    if not py:
        p = subprocess.run([os.path.join(ROOT, "scripts", "reference", "torch_python.sh")],
                           capture_output=True, text=True)
        if p.returncode != 0:
            fail(p.stderr.strip())
        py = p.stdout.strip()
    torch_version = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                   text=True).stdout.strip() or fail(f"{py} cannot import torch")
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = set(field(cpuinfo, "flags").split())
    torch_bf16 = {"on": True, "off": False}.get(a.torch_bf16, bool(flags & {"amx_bf16", "avx512_bf16"}))

    info = subprocess.run([a.chargpt, "info"], capture_output=True, text=True).stdout
    bench_help = subprocess.run([a.chargpt, "bench", "--help"], capture_output=True, text=True).stdout
    backend_help = bench_help[bench_help.find("--backend"):bench_help.find("--precision")]
    has_auto = "auto" in backend_help
    backends = [b.strip() for b in field(info, "backends:").split(",") if b.strip()]
    skipped = {}  # (preset, name) -> why
    ours = []
    for name, b, p in OURS:
        if b and backends and b not in backends:
            skipped.update({(pr, name): f"{b} not compiled in (backends: {', '.join(backends)})" for pr in presets})
        ours.append((name, (["--backend", "auto"] if has_auto else []) if b is None else
                     ["--backend", b, "--precision", p]))
    compile_modes = {"both": ["off", "on"], "on": ["on"], "off": ["off"]}[a.torch_compile]
    try:
        torch_threads = sorted({int(t) for t in a.torch_threads.split(",")}) if a.torch_threads else [a.threads]
    except ValueError:
        fail(f"--torch-threads: '{a.torch_threads}' is not a comma list of counts")
    if min(torch_threads) < 1:
        fail("--torch-threads: counts must be at least 1")
    theirs = [(f"{'bf16 autocast' if bf else 'fp32'}, {'compiled' if c == 'on' else 'eager'}"
               + (f", {t} thr" if len(torch_threads) > 1 else ""),
               (["--bf16"] if bf else []) + ["--compile", c, "--threads", str(t)])
              for t in torch_threads for bf in ([False, True] if torch_bf16 else [False]) for c in compile_modes]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    peer = os.path.join(ROOT, "scripts", "reference", "torch_gpt_ref.py")

    def our_cmd(preset, flags_):
        timed, warm = steps_of[preset]
        return [a.chargpt, "bench", "--data", a.data, "--preset", preset, "--threads", str(a.threads),
                "--steps", str(timed), "--warmup", str(warm), "--rounds", "1", "--json", "-q"] + flags_

    def their_cmd(preset, flags_):
        timed, warm = steps_of[preset]
        return [py, peer, "bench", "--data", a.data, "--steps", str(timed),
                "--warmup", str(warm)] + TORCH_SHAPE[preset] + flags_

    res = {}  # (preset, side, name) -> list of per-round dicts
    meta = {}  # (preset, side, name) -> what the run said about its setting
    load_before = open("/proc/loadavg").read().split()[:3]
    t_start = time.time()
    for r in range(1, a.rounds + 1):
        for preset in presets:
            for name, flags_ in ours:
                if (preset, name) in skipped:
                    continue
                j, why = run_json(our_cmd(preset, flags_), env, may_refuse=(r == 1))
                if why:
                    skipped[(preset, name)] = why
                    print(f"round {r} {preset:8s} chargpt {name:14s}: skipped: {why}", file=sys.stderr, flush=True)
                    continue
                row, m = j["rows"][0], j["method"]
                meta[(preset, "chargpt", name)] = {"chose": f"{m.get('backend', '?')} {m.get('precision', '?')}",
                                                   "flops": j["config"]["flops_per_step"]}
                res.setdefault((preset, "chargpt", name), []).append(
                    {"ms": row["ms_median"], "loss": row["loss_last"], "model": row["model_flops_per_s"] / 1e9,
                     "rate": row["sgemm_flops_per_s"] / 1e9, "precision": m.get("precision", "fp32")})
                print(f"round {r} {preset:8s} chargpt {name:14s} ({meta[(preset, 'chargpt', name)]['chose']}): "
                      f"{row['ms_median']:10.1f} ms  loss {row['loss_last']:.4f}  MFU {row['mfu']:.2f}",
                      file=sys.stderr, flush=True)
            for name, flags_ in theirs:
                if (preset, name) in skipped:
                    continue
                j, _ = run_json(their_cmd(preset, flags_), env)
                meta[(preset, "pytorch", name)] = {
                    "compile": j.get("compile", "off"),
                    "common": f"attention {j.get('attention', 'manual')}, AdamW {j.get('adamw', 'default')}, "
                              f"OPENBLAS_NUM_THREADS={j.get('openblas_threads')}"}
                if "--compile" in flags_ and flags_[flags_.index("--compile") + 1] == "on" and not j.get("compiled"):
                    skipped[(preset, name)] = j.get("compile", "did not compile")  # it ran eager: a duplicate row
                    print(f"round {r} {preset:8s} pytorch {name:24s}: {skipped[(preset, name)]}", file=sys.stderr)
                    continue
                res.setdefault((preset, "pytorch", name), []).append(
                    {"ms": j["ms_per_step"], "loss": j.get("loss_tail_mean", j["loss"]), "bf16": j["bf16"]})
                print(f"round {r} {preset:8s} pytorch {name:24s}: {j['ms_per_step']:10.1f} ms  "
                      f"loss {res[(preset, 'pytorch', name)][-1]['loss']:.4f}", file=sys.stderr, flush=True)
    load_after = open("/proc/loadavg").read().split()[:3]
    elapsed = time.time() - t_start

    rows = []  # dicts for the CSV; the markdown is made from them
    for preset in presets:
        flops = next((v["flops"] for k, v in meta.items() if k[0] == preset and "flops" in v), None)
        torch_rows = {k[2]: v for k, v in res.items() if k[0] == preset and k[1] == "pytorch"}
        if not torch_rows:
            fail(f"no PyTorch setting ran for {preset}")
        best_name = min(torch_rows, key=lambda n: statistics.median(x["ms"] for x in torch_rows[n]))
        best = statistics.median(x["ms"] for x in torch_rows[best_name])
        rate_by_precision = {}
        for name, _ in ours:
            for x in res.get((preset, "chargpt", name), []):
                rate_by_precision[x["precision"]] = max(rate_by_precision.get(x["precision"], 0), x["rate"])
        for name, flags_ in ours:
            base = {"preset": preset, "side": "chargpt", "setting": name, "threads": a.threads,
                    "command": " ".join(our_cmd(preset, flags_)).replace(ROOT + "/", "")}
            if (preset, name) in skipped:
                rows.append(dict(base, skipped=skipped[(preset, name)]))
                continue
            xs = res[(preset, "chargpt", name)]
            ms = [x["ms"] for x in xs]
            rate = max(x["rate"] for x in xs)  # the best sample: one disturbed one would show an MFU above 1
            label = name if name != "default" else (
                f"default ({'--backend auto: ' if has_auto else 'no --backend: '}{meta[(preset, 'chargpt', name)]['chose']})")
            rows.append(dict(base, setting=label, ms=ms, loss=xs[-1]["loss"],
                             mfu=statistics.median(x["model"] for x in xs) / rate, rate=rate,
                             ratio=best / statistics.median(ms)))
        for name, flags_ in theirs:
            base = {"preset": preset, "side": "PyTorch", "setting": name,
                    "threads": int(flags_[flags_.index("--threads") + 1]),
                    "command": " ".join(their_cmd(preset, flags_)).replace(ROOT + "/", "")}
            if (preset, name) in skipped:
                rows.append(dict(base, skipped=skipped[(preset, name)]))
                continue
            xs = torch_rows[name]
            ms = [x["ms"] for x in xs]
            rate = rate_by_precision.get("bf16" if xs[0]["bf16"] else "fp32")
            mfu = flops / (statistics.median(ms) / 1000) / (rate * 1e9) if flops and rate else None
            rows.append(dict(base, setting=name + (" (best)" if name == best_name else ""), ms=ms,
                             loss=xs[-1]["loss"], mfu=mfu, rate=rate, ratio=best / statistics.median(ms)))
        if not torch_bf16:
            rows.append({"preset": preset, "side": "PyTorch", "setting": "bf16 autocast", "threads": a.threads,
                         "command": "", "skipped": "--torch-bf16 off" if a.torch_bf16 == "off" else
                         "no AMX or AVX512-BF16 on this CPU (--torch-bf16 on to force)"})

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = cpu_description(cpuinfo) or platform.processor() or "unknown CPU"
    isa = field(info, "cpu:", "?")
    out = [f"**{cpu}**, {os.cpu_count()} hardware threads ({isa}); {date}; chargpt at {a.threads} threads, "
           f"PyTorch {torch_version} at {', '.join(map(str, torch_threads))}; {a.rounds} interleaved round(s); load average before {' '.join(load_before)}, "
           f"after {' '.join(load_after)}; {elapsed:.0f} s.",
           "",
           f"`python3 scripts/bench/bench_table.py {' '.join(sys.argv[1:])}`".replace("``", ""),
           "",
           "| preset | side | setting | ms/step, median (range) | loss | MFU (product rate, GFLOP/s) "
           "| PyTorch's best / this |",
           "|---|---|---|---|---|---|---|"]
    for x in rows:
        if "skipped" in x:
            out.append(f"| {x['preset']} | {x['side']} | {x['setting']} | skipped: {x['skipped']} | | | |")
            continue
        mfu = f"{x['mfu']:.2f} ({x['rate']:.0f})" if x["mfu"] is not None else ""
        ratio = f"{x['ratio']:.2f}×"
        out.append(f"| {x['preset']} | {x['side']} | {x['setting']} | {fmt_range(x['ms'], 1)} | {x['loss']:.4f} "
                   f"| {mfu} | {'**' + ratio + '**' if x['side'] == 'chargpt' else ratio} |")
    out.append("")
    out.append("Steps per run (timed + warmup; PyTorch adds untimed steps until torch.compile has compiled): "
               + ", ".join(f"{p} {steps_of[p][0]} + {steps_of[p][1]}" for p in presets)
               + ". Loss: mean of the last 5 steps at a constant lr 1e-3, both sides. PyTorch's MFU is against "
               "the best product rate chargpt measured at the same precision. PyTorch ("
               + py.replace(ROOT + "/", "") + "): "
               + "; ".join(sorted({v["common"] for k, v in meta.items() if k[1] == "pytorch"})) + ".")
    out.append("")
    out.append("Commands (one run each, per round):")
    out.append("")
    out += [f"    {x['command']}" for x in rows if x["command"] and x["preset"] == presets[0]]
    if len(presets) > 1:
        out.append("    (the other presets: the same with --preset and --steps/--warmup, and PyTorch's shape flags "
                   + "; ".join(f"{p}: {' '.join(TORCH_SHAPE[p])}" for p in presets[1:]) + ")")
    text = "\n".join(out)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["date", "cpu", "torch", "preset", "side", "setting", "threads", "ms_median", "ms_min",
                        "ms_max", "rounds", "loss", "mfu", "product_gflops", "torch_best_over_this", "skipped",
                        "command"])
            for x in rows:
                ms = x.get("ms")
                w.writerow([date, cpu, torch_version, x["preset"], x["side"], x["setting"], x["threads"],
                            f"{statistics.median(ms):.3f}" if ms else "", f"{min(ms):.3f}" if ms else "",
                            f"{max(ms):.3f}" if ms else "", len(ms) if ms else 0,
                            f"{x['loss']:.4f}" if ms else "",
                            f"{x['mfu']:.3f}" if ms and x["mfu"] is not None else "",
                            f"{x['rate']:.1f}" if ms and x["rate"] else "",
                            f"{x['ratio']:.3f}" if ms else "", x.get("skipped", ""), x["command"]])


if __name__ == "__main__":
    main()
