#!/usr/bin/env python3
"""A MODEL, not a measurement: projected step time of chargpt's data-parallel
training (engine.h) on N machines, one rank per machine, alpha-beta costs.

The step runs in rounds (Partition::round): in each round every rank computes up
to G shards (G = its shards in flight) with all its cores (work splits inside a
shard), sends each shard's gradient slices to their chunk owners, and the owners
fold them in shard order. More ranks than shards is allowed: idle ranks only
own chunks. Per rank r with S_r shards and P_r own parameters (P / N):

  compute(N) = ceil(S/N) / S * t1                 (t1: one machine, all cores)
  comm(N)    = rounds * (N-1) alpha + (S_r (P - P_r) + P_r (N-1)) * 4 / beta
               (the rounds' slices, then the all-gather of the updated parameters)
             + 2 ceil(log2 N) alpha                (loss and norm gathers)
  ring allreduce of the gradients, for comparison:
               2 (N-1) alpha + 2 * 4 P (N-1)/N / beta
  so the scheme sends (ceil(S/N) + 1)/2 times the ring's bytes: the same at N >= S.
  (Links full duplex, a non-blocking switch, no overlap of communication and compute.)

usage: scripts/bench/mpi_model.py GFLOPS_PER_MACHINE CORES ALPHA_US
  GFLOPS_PER_MACHINE: the model FLOP rate one machine reaches in training (measured: model
  FLOPs per step / ms per step at 1 rank x all threads); CORES: threads per rank (its G);
  ALPHA_US: per-message latency.
"""
import math
import sys


def params(L, C, T, V=65):
    per_layer = 12 * C * C + 13 * C
    return V * C + T * C + L * per_layer + 2 * C, L * 12 * C * C + V * C


def flops_per_step(L, C, T, B, V=65):
    _, matmul = params(L, C, T, V)
    return (6 * matmul + 12 * L * C * T) * B * T


def bytes_per_rank(P, S, N):
    """(this scheme, ring allreduce): bytes the busiest rank sends per step."""
    if N == 1:
        return 0.0, 0.0
    S_r = math.ceil(S / N)
    P_r = P / N
    scheme = 4 * (S_r * (P - P_r) + P_r * (N - 1))
    ring = 2 * 4 * P * (N - 1) / N
    return scheme, ring


def project(L, C, T, B, S, gflops, cores, alpha, links, Ns):
    P, _ = params(L, C, T)
    f = flops_per_step(L, C, T, B)
    t1 = f / (gflops * 1e9)  # one machine, all cores
    rows = []
    for gbps in links:
        beta = gbps * 1e9 / 8  # bytes/s
        for N in Ns:
            compute = math.ceil(S / N) / S * t1
            scheme, ring_bytes = bytes_per_rank(P, S, N)
            if N == 1:
                rows.append((gbps, N, compute, 0.0, 0.0, 0.0))
                continue
            rounds = math.ceil(S / (N * min(cores, math.ceil(S / N))))
            comm = rounds * (N - 1) * alpha + scheme / beta + (N - 1) * alpha + 2 * math.ceil(math.log2(N)) * alpha
            ring = 2 * (N - 1) * alpha + ring_bytes / beta
            rows.append((gbps, N, compute, comm, scheme, ring))
    return P, f, t1, rows


def main():
    if len(sys.argv) < 4:
        print(__doc__)
        sys.exit(2)
    gflops, cores, alpha = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) * 1e-6
    links = [10, 25, 100]
    Ns = [1, 2, 4, 8, 16, 32]
    models = [("nanogpt (L6 C384 T256 B64, 16 shards)", 6, 384, 256, 64, 16),
              ("124M (L12 C768 T256 B64, 16 shards)", 12, 768, 256, 64, 16)]
    for name, L, C, T, B, S in models:
        P, f, t1, rows = project(L, C, T, B, S, gflops, cores, alpha, links, Ns)
        print(f"\n{name}: {P/1e6:.1f} M parameters, {f/1e12:.2f} TFLOP/step, {t1:.1f} s/step on one machine "
              f"({gflops:.0f} GFLOP/s); speedup (share of the step communicating):\n")
        print("| N | MB sent/rank/step | ring allreduce MB | ratio | " + " | ".join(f"{g} Gb/s" for g in links) + " |")
        print("|---|---|---|---|" + "---|" * len(links))
        for N in Ns:
            scheme, ring_bytes = bytes_per_rank(P, S, N)
            cells = [f"{t1 / (comp + comm):.2f}× ({100 * comm / (comp + comm):.0f}%)"
                     for gbps, n, comp, comm, _, _ in rows if n == N]
            ratio = f"{scheme / ring_bytes:.2f}" if ring_bytes else "-"
            print(f"| {N} | {scheme/1e6:.0f} | {ring_bytes/1e6:.0f} | {ratio} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
