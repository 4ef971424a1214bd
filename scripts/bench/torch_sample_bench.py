#!/usr/bin/python3
"""PyTorch peer for `chargpt sample`: times nanoGPT-style whole-context sampling
(no KV cache: every new token runs the model over the context cropped to the
last block_size tokens, under torch.no_grad) for a randomly initialised model of
the same architecture (the project's reference, scripts/reference/torch_gpt_ref.py), and
prints one JSON line. Needs PyTorch: scripts/setup_torch_peer.sh (or Debian's python3-torch).

  $(scripts/reference/torch_python.sh) scripts/bench/torch_sample_bench.py --threads 2 --tokens 512
  (defaults: the baby shape, V=65 T=64 L=4 H=4 C=128)

Compare with
  chargpt sample --checkpoint BABY --tokens 512 --json --threads N [--no-kv-cache --keep 64]
(--keep 64 = block_size makes chargpt's uncached path the same nanoGPT crop).
Timings are for random weights; the cost per token does not depend on them.
"""
import argparse, json, os, resource, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))  # torch_gpt_ref.py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--tokens', type=int, default=512)
    ap.add_argument('--temperature', type=float, default=0.8)
    ap.add_argument('--warmup', type=int, default=16, help='tokens generated (and not timed) first')
    ap.add_argument('--repeats', type=int, default=3, help='timed runs; the fastest is reported')
    ap.add_argument('-V', type=int, default=65); ap.add_argument('-T', type=int, default=64)
    ap.add_argument('-L', type=int, default=4); ap.add_argument('-H', type=int, default=4)
    ap.add_argument('-C', type=int, default=128)
    a = ap.parse_args()
    # Debian's torch runs its matmuls on OpenBLAS; OpenBLAS threads on top of
    # torch's own oversubscribe the cores (10x slower at 2 threads here), so
    # parallelism is torch's alone unless the caller says otherwise.
    os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
    from torch_gpt_ref import GPT, torch  # exits with how to install PyTorch when it is missing

    torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    model = GPT(a.V, a.T, a.L, a.H, a.C).eval()
    g = torch.Generator().manual_seed(1337)

    @torch.no_grad()
    def generate(n):
        idx = torch.zeros((1, 1), dtype=torch.long)  # the prompt: one token
        for _ in range(n):
            idx_cond = idx[:, -a.T:]  # nanoGPT's crop to block_size
            logits, _ = model(idx_cond)
            probs = torch.softmax(logits[:, -1, :] / a.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=g)
            idx = torch.cat((idx, nxt), dim=1)
        return idx

    generate(a.warmup)
    best = float('inf')
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        generate(a.tokens)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({
        'peer': 'pytorch', 'version': torch.__version__, 'threads': a.threads,
        'openblas_threads': os.environ['OPENBLAS_NUM_THREADS'], 'kv_cache': False,
        'shape': {'V': a.V, 'T': a.T, 'L': a.L, 'H': a.H, 'C': a.C},
        'new_tokens': a.tokens, 'seconds': round(best, 4),
        'tokens_per_s': round(a.tokens / best, 1), 'ms_per_token': round(1000 * best / a.tokens, 3),
        'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == '__main__':
    main()
