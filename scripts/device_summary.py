#!/usr/bin/env python3
"""scripts/device_check.sh's last step: from the raw results in RES (build-device/res) write
OUTDIR/summary.md and the raw files beside it, eight files at most:

  summary.md  log.txt (written by device_check.sh)  system.txt  ctest.xml  baby_loss.csv
  train.jsonl  bench.csv  bench.jsonl

usage: device_summary.py RES OUTDIR        (standard library only; any python3 >= 3.8)
"""
import csv
import glob
import io
import json
import math
import os
import re
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def grab(text, pattern, default="?"):
    m = re.search(pattern, text, re.M)
    return m.group(1).strip() if m else default


def fmt(x, nd=1):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def load_json_last(path):
    """The last line that parses as a JSON object (chargpt bench --json, the peer)."""
    for line in reversed(read(path).strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    try:
        return json.loads(read(path))
    except ValueError:
        return None


def sections(text):
    """system.txt's '== name' sections: {name: body}."""
    out, name = {}, ""
    for line in text.splitlines():
        if line.startswith("== "):
            name = line[3:].strip()
            out[name] = []
        else:
            out.setdefault(name, []).append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def last_line(text, default="?"):
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1].strip() if lines else default


def machine(res, md):
    sysinfo, info = read(f"{res}/system.txt"), read(f"{res}/info.txt")
    sec = sections(sysinfo)
    flags = grab(sysinfo, r"^flags\s*:\s*(.*)$", "").split()
    want = ["avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
    q = sec.get("nvidia-smi query", "").splitlines()
    gpu = [c.strip() for c in q[1].split(",")] if len(q) > 1 and "," in q[1] else []
    cpu_model = grab(sysinfo, r"^Model name:\s*(.*)$")
    gpu_name = gpu[0] if gpu else "no GPU"
    md.append(f"# chargpt device check, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {cpu_model}, {gpu_name}\n")
    nproc = grab(sysinfo, r"^== nproc\n(\d+)")
    sockets = grab(sysinfo, r"^Socket\(s\):\s*(.*)$")
    cores = grab(sysinfo, r"^Core\(s\) per socket:\s*(.*)$")
    tpc = grab(sysinfo, r"^Thread\(s\) per core:\s*(.*)$")
    rows = [
        ("CPU", f"{cpu_model}; {nproc} logical CPUs; {sockets} socket(s), {cores} cores/socket, {tpc} thread(s)/core"),
        ("CPU flags", " ".join(f for f in want if f in flags) or "?"),
        ("memory", grab(sysinfo, r"^Mem:\s+(\S+)") + " GiB"),
        ("GPU", (", ".join(gpu) + f" ({q[0]})") if gpu else "none (nvidia-smi absent or failed)"),
        ("chargpt cuda", grab(info, r"^cuda:\s*(.*)$")),
        ("chargpt backends", grab(info, r"^backends:\s*(.*)$")),
        ("BLAS / oneDNN", grab(info, r"^blas:\s*(.*)$") + " / " + grab(info, r"^onednn:\s*(.*)$")),
        ("g++ / nvcc / cmake", " / ".join([last_line(sec.get("g++", "")), grab(sysinfo, r"^(Cuda compilation tools.*)$"),
                                           grab(sysinfo, r"^(cmake version .*)$")])),
        ("python / torch", last_line(sec.get("python", ""))),
        ("binaries", grab(read(f"{res}/meta.tsv"), r"^bindir\t(.*)$") +
         (" (PREBUILT fallback, -DCHARGPT_NATIVE=OFF)" if "/tmp/chargpt-prebuilt" in read(f"{res}/meta.tsv") else " (built here)")),
    ]
    md.append(table(["", ""], rows) + "\n")


def stages(res, md):
    rows = [line.split("\t") for line in read(f"{res}/stages.tsv").splitlines() if line.strip()]
    order = ["unpack", "system", "build", "fallback", "info", "ctest", "baby_loss", "nanogpt_gpu", "cuda_switches", "peer_gpu",
             "nanogpt_cpu", "baby_cpu", "nanogpt_bf16", "peer_cpu", "total"]
    rows.sort(key=lambda r: order.index(r[0]) if r[0] in order else len(order) - 1)
    md.append("## Stages\n")
    md.append(table(["stage", "status", "s", "note"], [(r + ["", "", "", ""])[:4] for r in rows]) + "\n")


def tests(res, out, md):
    md.append("## Tests\n")
    text = read(f"{res}/ctest.txt")
    for pat in (r"^(\d+% tests passed.*)$", r"^(Total Test time.*)$", r"^(\[doctest\] test cases:.*)$"):
        line = grab(text, pat, "")
        if line:
            md.append(f"- {line}")
    xml = f"{res}/ctest.xml"
    if not os.path.exists(xml):
        md.append("- no JUnit results (the ctest stage did not run)\n")
        return
    with open(xml, "rb") as f:
        data = f.read()
    with open(f"{out}/ctest.xml", "wb") as f:
        f.write(data)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        md.append(f"- ctest.xml does not parse: {e}\n")
        return
    cases = root.iter("testcase")
    gpu_ran, gpu_skipped, failed, skipped = [], [], [], []
    n = 0
    for c in cases:
        n += 1
        name = c.get("name", "?")
        outtxt = "".join(t.text or "" for t in c.iter("system-out"))
        st = c.get("status", "run")
        is_fail = c.find("failure") is not None or c.find("error") is not None or st == "fail"
        is_skip = c.find("skipped") is not None or st in ("notrun", "disabled") or "SKIPPED:" in outtxt
        if is_fail:
            failed.append(name)
        elif is_skip:
            why = grab(outtxt, r"SKIPPED:\s*(.*)$", "")
            skipped.append(f"{name}" + (f" ({why[:70]}{'...' if len(why) > 70 else ''})" if why else ""))
        if re.search(r"gpu", name, re.I):
            (gpu_skipped if is_skip else gpu_ran).append(name + (" **FAILED**" if is_fail else ""))
    md.append(f"- {n} cases in ctest.xml; failed: {len(failed)}; skipped (or printing SKIPPED:): {len(skipped)}")
    for name in failed:
        md.append(f"  - FAILED: {name}")
    for name in skipped:
        md.append(f"  - skipped: {name}")
    md.append(f"- cases that need the GPU (\"gpu\" in the name): {len(gpu_ran)} ran, {len(gpu_skipped)} skipped")
    for name in gpu_ran:
        md.append(f"  - ran: {name}")
    for name in gpu_skipped:
        md.append(f"  - SKIPPED: {name}")
    md.append("")


def loss_curves(res, out, md):
    runs = {}
    with open(f"{out}/train.jsonl", "w") as f:
        for label in ("cpu", "cuda"):
            for line in read(f"{res}/train_{label}.jsonl").splitlines():
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                runs.setdefault(label, []).append(j)
                f.write(json.dumps({"run": label, **j}) + "\n")
    md.append("## baby, 200 steps: --backend cuda (fp32, no TF32) against the CPU default, seed 1337\n")
    if not runs:
        md.append("no training logs (the baby_loss stage did not run or failed)\n")
        return

    def by_step(label, typ, key):
        return {j["step"]: j.get(key) for j in runs.get(label, []) if j.get("type") == typ and key in j}

    cols = [("loss", "step", "loss"), ("train est", "eval", "train_loss"), ("val est", "eval", "val_loss")]
    series = {(lab, name): by_step(lab, typ, key) for lab in ("cpu", "cuda") for name, typ, key in cols}
    steps = sorted({s for d in series.values() for s in d if s % 50 == 0})
    rows, worst = [], 0.0
    with open(f"{out}/baby_loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step"] + [f"{lab}_{key}" for _, _, key in cols for lab in ("cpu", "cuda")] + ["max_abs_diff"])
        for s in steps:
            vals, diffs = [], []
            for name, _, _ in cols:
                a, b = series[("cpu", name)].get(s), series[("cuda", name)].get(s)
                vals += [a, b]
                if a is not None and b is not None:
                    diffs.append(abs(a - b))
            d = max(diffs) if diffs else None
            if d is not None:
                worst = max(worst, d)
            w.writerow([s] + ["" if v is None else f"{v:.6f}" for v in vals] + ["" if d is None else f"{d:.2e}"])
            rows.append([s] + [fmt(v, 4) for v in vals] + ["-" if d is None else f"{d:.1e}"])
    hdr = ["step"] + [f"{name} {lab}" for name, _, _ in cols for lab in ("cpu", "cuda")] + ["max abs diff"]
    md.append(table(hdr, rows))
    ms = {lab: [j["ms_per_step"] for j in runs.get(lab, []) if j.get("type") == "step" and "ms_per_step" in j]
          for lab in ("cpu", "cuda")}
    verdict = "within 1e-3" if worst <= 1e-3 else "MORE than 1e-3 apart"
    md.append(f"\nlargest |cpu - cuda| over the table: {worst:.2e} ({verdict}); ms/step at the logged steps: "
              f"cpu {', '.join(fmt(x) for x in ms['cpu'])}; cuda {', '.join(fmt(x) for x in ms['cuda'])}\n")


BENCH_LABELS = ["nanogpt_cpu", "nanogpt_cpu_bf16", "nanogpt_cuda", "nanogpt_cuda_tf32", "nanogpt_cuda_bf16",
                "nanogpt_cuda_plain", "nanogpt_cuda_nocache", "nanogpt_cuda_nochunk", "nanogpt_cuda_notimers",
                "nanogpt_cuda_defaults", "nanogpt_cuda_plain_1thread", "nanogpt_cuda_defaults_1thread",
                "baby_cpu", "baby_cuda"]
PEER_LABELS = ["nanogpt_cpu", "nanogpt_cpu_bf16", "nanogpt_cuda", "nanogpt_cuda_bf16",
               "baby_cpu", "baby_cpu_bf16", "baby_cuda", "baby_cuda_bf16"]


def bench_files(res, label, ext):
    """bench_LABEL.EXT, or bench_LABEL_tN.EXT for each thread count N, in thread order."""
    one = f"{res}/bench_{label}.{ext}"
    if os.path.exists(one):
        return [one]
    files = glob.glob(f"{res}/bench_{label}_t*.{ext}")
    tn = lambda f: int(re.search(r"_t(\d+)\.", f).group(1)) if re.search(r"_t(\d+)\.", f) else 0
    return sorted((f for f in files if re.fullmatch(r"bench_" + re.escape(label) + r"_t\d+\." + ext, os.path.basename(f))), key=tn)


def benches(res, out, md):
    ours, peers = {}, {}
    with open(f"{out}/bench.jsonl", "w") as fj:
        for label in BENCH_LABELS:
            # one file per label, or one per thread count (LABEL_tN, the sweeps): rows merged by threads
            for path in bench_files(res, label, "json"):
                j = load_json_last(path)
                if not j:
                    continue
                fj.write(json.dumps({"run": label, "side": "chargpt", **j}) + "\n")
                if label in ours:
                    ours[label]["rows"] = ours[label].get("rows", []) + j.get("rows", [])
                else:
                    ours[label] = j
            if label in ours:
                rows = sorted(ours[label].get("rows", []), key=lambda r: r.get("threads", 0))
                one = [r for r in rows if r.get("threads") == 1 and r.get("ms_median")]
                for r in rows:  # speedup over 1 thread of the same label, when the sweep has it
                    if one and r.get("ms_median"):
                        r["speedup"] = one[0]["ms_median"] / r["ms_median"]
                ours[label]["rows"] = rows
        for label in PEER_LABELS:
            j = load_json_last(f"{res}/peer_{label}.json")
            if j:
                peers[label] = j
                fj.write(json.dumps({"run": label, "side": "pytorch", **j}) + "\n")
    header = None
    with open(f"{out}/bench.csv", "w", newline="") as fc:
        w = csv.writer(fc)
        for label in BENCH_LABELS:
            for path in bench_files(res, label, "csv"):
                text = read(path)
                if not text.strip():
                    continue
                r = list(csv.reader(io.StringIO(text)))
                if header is None:
                    header = ["run"] + r[0]
                    w.writerow(header)
                for row in r[1:]:
                    w.writerow([label] + row)

    for preset in ("nanogpt", "baby"):
        labels = [l for l in BENCH_LABELS if l.startswith(preset) and l in ours]
        md.append(f"## {preset} per step (chargpt bench)\n")
        if not labels:
            md.append("no results\n")
            continue
        rows = []
        for l in labels:
            m = ours[l].get("method", {})
            for r in ours[l].get("rows", []):
                rows.append([l, m.get("backend", "?"), m.get("precision", "?") + (" tf32" if "tf32" in l else ""),
                             r.get("threads"), fmt(r.get("ms_median"), 1), fmt(r.get("tok_per_s"), 0),
                             fmt(r.get("speedup"), 2), fmt(100 * r["mfu"], 1) if r.get("mfu") is not None else "-",
                             fmt((r.get("sgemm_flops_per_s") or float("nan")) / 1e9, 0),
                             f"{fmt(r.get('fwd_bwd_ms'))} / {fmt(r.get('reduce_opt_ms'))} / {fmt(r.get('rest_ms'))}",
                             fmt(100 * r["other_cpu_frac"], 0) if r.get("other_cpu_frac") is not None else "-"])
        md.append(table(["run", "backend", "precision", "threads", "ms/step", "tok/s", "speedup", "MFU %",
                         "sgemm GFLOP/s", "fwd+bwd / reduce+opt / rest ms", "others' CPU %"], rows) + "\n")
        # A device backend's split of the step (bench's dev_* fields; -1 = not a device backend).
        dev = [(l, r) for l in labels for r in ours[l].get("rows", []) if (r.get("dev_call_ms") or -1) >= 0]
        if dev:
            keys = [k for k in dev[0][1] if k.startswith("dev_")]
            md.append(f"Where the {preset} GPU step goes, per step (bench's dev_* fields; MFU with the transfers: mfu_io)\n")
            md.append(table(["run", "threads", "mfu_io %"] + [k[4:] for k in keys],
                            [[l, r.get("threads"), fmt(100 * r["mfu_io"], 1) if r.get("mfu_io") is not None else "-"]
                             + [fmt(r.get(k), 2) for k in keys] for l, r in dev]) + "\n")

    md.append("## The PyTorch peer (scripts/torch_gpt_ref.py bench) on this machine, and the ratios\n")
    if not peers:
        md.append("no peer results\n")
        return

    def ours_ms(label, threads=None):
        j = ours.get(label)
        if not j:
            return None
        rows = j.get("rows", [])
        if threads is not None:
            rows = [r for r in rows if r.get("threads") == threads] or rows[-1:]
        return rows[-1].get("ms_median") if rows else None

    pairs = {"nanogpt_cpu": "nanogpt_cpu", "nanogpt_cpu_bf16": "nanogpt_cpu_bf16", "nanogpt_cuda": "nanogpt_cuda",
             "nanogpt_cuda_bf16": "nanogpt_cuda_bf16", "baby_cpu": "baby_cpu", "baby_cpu_bf16": "baby_cpu",
             "baby_cuda": "baby_cuda", "baby_cuda_bf16": "baby_cuda"}
    rows = []
    for l in PEER_LABELS:
        p = peers.get(l)
        if not p:
            continue
        mine = pairs[l]
        o = ours_ms(mine, p.get("threads"))
        ratio = p["ms_per_step"] / o if o else None
        rows.append([l, p.get("device", "cpu"), "bf16 autocast" if p.get("bf16") else "fp32", p.get("threads"),
                     fmt(p.get("ms_per_step"), 2), fmt(p.get("tok_per_s"), 0), f"{mine}: {fmt(o, 2)}",
                     fmt(ratio, 2)])
    md.append(table(["peer run", "device", "precision", "threads", "ms/step", "tok/s", "chargpt run: ms/step",
                     "peer ms / chargpt ms (>1: chargpt faster)"], rows) + "\n")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    res, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    md = []
    machine(res, md)
    stages(res, md)
    tests(res, out, md)
    loss_curves(res, out, md)
    benches(res, out, md)
    with open(f"{out}/system.txt", "w") as f:
        f.write(read(f"{res}/system.txt") + "\n" + read(f"{res}/info.txt"))
    with open(f"{out}/summary.md", "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
