#!/usr/bin/env bash
# One machine's cores as 1 rank x 2 threads against 2 ranks x 1 thread (Open MPI,
# shared memory), rounds interleaved so that drift in the machine's speed hits
# both alike. Prints per round and the medians: ms/step (median over the steps
# after the first 2), ms/step in MPI calls and MB sent per step (rank 0).
#   scripts/bench/mpi_bench.sh [PRESET=baby] [STEPS=20] [ROUNDS=3] [extra train flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
preset=${1:-baby}; steps=${2:-20}; rounds=${3:-3}; shift $(( $# < 3 ? $# : 3 )) || true
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mpirun_cmd=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpirun_cmd+=(--allow-run-as-root)
common=(train --preset "$preset" --steps "$steps" --eval-interval 0 --eval-iters 1 --log-interval 1 "$@")
for r in $(seq "$rounds"); do
  build/chargpt "${common[@]}" --threads 2 --out "$tmp/a.safetensors" --log "$tmp/1x2.$r.jsonl" > "$tmp/1x2.$r.out"
  "${mpirun_cmd[@]}" -np 2 build/chargpt "${common[@]}" --threads 1 --out "$tmp/b.safetensors" \
    --log "$tmp/2x1.$r.jsonl" > "$tmp/2x1.$r.out"
  cmp -s "$tmp/a.safetensors" "$tmp/b.safetensors" && same="weights identical" || same="WEIGHTS DIFFER"
  echo "round $r: $same"
done
python3 - "$tmp" "$rounds" "$preset" <<'PY'
import json, re, statistics, sys
tmp, rounds, preset = sys.argv[1], int(sys.argv[2]), sys.argv[3]
res = {}
for mode in ("1x2", "2x1"):
    for r in range(1, rounds + 1):
        steps = [json.loads(l) for l in open(f"{tmp}/{mode}.{r}.jsonl") if '"step"' in l and '"loss"' in l]
        ms = statistics.median(s["ms_per_step"] for s in steps[2:])
        out = open(f"{tmp}/{mode}.{r}.out").read()
        m = re.search(r"([\d.]+) ms/step in MPI calls.*?([\d.]+) MB sent/step", out)
        comm, mb = (float(m.group(1)), float(m.group(2))) if m else (0.0, 0.0)
        res.setdefault(mode, []).append((ms, comm, mb))
        print(f"{preset} {mode} round {r}: {ms:.1f} ms/step, {comm:.2f} ms/step in MPI, {mb:.2f} MB sent/step")
for mode, v in res.items():
    print(f"{preset} {mode} median: {statistics.median(x[0] for x in v):.1f} ms/step, "
          f"{statistics.median(x[1] for x in v):.2f} ms/step in MPI, {v[0][2]:.2f} MB sent/step (rank 0)")
PY
