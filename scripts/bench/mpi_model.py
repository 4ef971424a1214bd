#!/usr/bin/env python3
"""A MODEL, not a measurement: projected step time of chargpt's data-parallel
training (dist.h) on N machines, one rank per machine, alpha-beta costs.

  compute(N) = ceil(ceil(S/N) / cores) * t_shard_wave + t_opt / N
  comm(N)    = all-to-all of the shard gradients  (N-1) alpha + 4 P (N-1)/N * ceil(S/N)/N... per rank:
               S_r * P_r' floats to each peer -> bytes_a2a = 4 P (N-1)/N * S/N
             + all-gather of the parameters     (N-1) alpha + 4 P (N-1)/N / beta
             + two tiny collectives             2 ceil(log2 N) alpha
  ring allreduce of the gradients, for comparison: 2 (N-1) alpha + 2 * 4 P (N-1)/N / beta
  (links full duplex, a non-blocking switch, no overlap of communication and compute).

usage: scripts/bench/mpi_model.py GFLOPS_PER_MACHINE CORES ALPHA_US [--markdown]
  GFLOPS_PER_MACHINE: the model FLOP rate one machine reaches in training (measured: model
  FLOPs per step / ms per step at 1 rank x all threads); ALPHA_US: per-message latency.
"""
import math
import sys


def params(L, C, T, V=65):
    per_layer = 12 * C * C + 13 * C
    return V * C + T * C + L * per_layer + 2 * C, L * 12 * C * C + V * C


def flops_per_step(L, C, T, B, V=65):
    _, matmul = params(L, C, T, V)
    return (6 * matmul + 12 * L * C * T) * B * T


def project(name, L, C, T, B, S, gflops, cores, alpha, links, Ns):
    P, _ = params(L, C, T)
    f = flops_per_step(L, C, T, B)
    t1 = f / (gflops * 1e9)                      # one machine, all cores
    waves1 = math.ceil(S / cores)
    t_wave = t1 / waves1                          # one wave of `cores` shards
    rows = []
    for gbps in links:
        beta = gbps * 1e9 / 8                     # bytes/s
        for N in Ns:
            if N > S:
                continue
            compute = math.ceil(math.ceil(S / N) / cores) * t_wave
            if N == 1:
                rows.append((gbps, N, compute, 0.0, 0.0, 0.0))
                continue
            a2a = 4 * P * (N - 1) / N * (S / N)
            ag = 4 * P * (N - 1) / N
            comm = 2 * (N - 1) * alpha + (a2a + ag) / beta + 2 * math.ceil(math.log2(N)) * alpha
            ring = 2 * (N - 1) * alpha + 2 * 4 * P * (N - 1) / N / beta
            rows.append((gbps, N, compute, comm, (a2a + ag) / 1e6, ring))
    return P, f, t1, rows


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        sys.exit(2)
    gflops, cores, alpha = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) * 1e-6
    links = [10, 25, 100]
    Ns = [1, 2, 4, 8, 16]
    models = [("nanogpt (L6 C384 T256 B64, 16 shards)", 6, 384, 256, 64, 16),
              ("wider (L12 C768 T256 B64, 16 shards)", 12, 768, 256, 64, 16)]
    for name, L, C, T, B, S in models:
        P, f, t1, rows = project(name, L, C, T, B, S, gflops, cores, alpha, links, Ns)
        print(f"\n{name}: {P/1e6:.1f} M parameters, {f/1e12:.2f} TFLOP/step, {t1:.1f} s/step on one machine "
              f"({gflops:.0f} GFLOP/s, {cores} shards at a time); speedup (share of the step communicating):\n")
        print("| N | MB sent/rank/step (ring allreduce) | " + " | ".join(f"{g} Gb/s" for g in links) + " |")
        print("|---|---|" + "---|" * len(links))
        for N in Ns:
            if N > S:
                continue
            cells = []
            mb = ring_mb = 0.0
            for gbps, n, comp, comm, m, ring in rows:
                if n != N:
                    continue
                mb, ring_mb = m, 2 * 4 * P * (N - 1) / N / 1e6
                cells.append(f"{t1 / (comp + comm):.2f}× ({100 * comm / (comp + comm):.0f}%)")
            print(f"| {N} | {mb:.0f} ({ring_mb:.0f}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
