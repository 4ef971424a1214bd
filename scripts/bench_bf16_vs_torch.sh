#!/usr/bin/env bash
# Baby preset, interleaved: chargpt fp32/openblas, bf16/onednn (2 threads) vs PyTorch 1 thread fp32 and bf16 autocast.
# usage: scripts/bench_bf16_vs_torch.sh   (needs python3-torch for /usr/bin/python3; run on an idle machine)
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
for r in 1 2 3; do
  for be in "--backend openblas" "--backend onednn --precision bf16"; do
    ms=$(build/chargpt bench --preset baby --threads 2 --steps 20 --warmup 3 --rounds 1 --sgemm-size 256 --json -q $be 2>/dev/null | /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["rows"][0]["ms_median"] if "ms_median" in j["rows"][0] else j["rows"][0]["median_s"]*1e3,2))')
    echo "round $r chargpt $be: $ms ms"
  done
  for tb in "" "--bf16"; do
    out=$(/usr/bin/python3 scripts/torch_gpt_ref.py bench --threads 1 --steps 20 --warmup 3 $tb 2>/dev/null | tail -1)
    echo "round $r torch 1thr $tb: $out"
  done
done
