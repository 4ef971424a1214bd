#!/usr/bin/python3
"""chargpt's PyTorch reference: the same model and training recipe, in PyTorch.

The model is nanoGPT's (and chargpt's): learned token and position embeddings,
pre-LayerNorm blocks with causal multi-head self-attention and a tanh-GELU MLP,
a final LayerNorm, an LM head tied to the token embedding, biases everywhere,
nanoGPT's init and state-dict names. Training is chargpt's: AdamW (PyTorch's,
decoupled decay on 2-D tensors only), linear warmup then cosine decay to
--min-lr, global-norm clipping, random windows from the first 90% of the text's
characters; the rest validates. Defaults are `chargpt train`'s (baby preset).

  bench  time --steps optimizer steps after --warmup untimed ones at a constant
         --lr (as `chargpt bench`); one JSON line (median ms/step, tokens/s, the
         last loss and the mean of the last 5, peak memory, the setting)
  train  --steps steps on the text (loss estimates every --eval-interval steps
         like chargpt), then the exact val loss the way `chargpt eval` computes
         it (windows at 0, T, 2T, ..., every target once); one JSON line at the
         end with the wall times

  PY=$(scripts/reference/torch_python.sh)        # the peer's Python (see below)
  $PY scripts/reference/torch_gpt_ref.py bench [--bf16] [--compile on|off|auto]
  $PY scripts/reference/torch_gpt_ref.py train --steps 2000 [--bf16]

PyTorch: scripts/setup_torch_peer.sh puts a current release from PyPI into
.venv-torch/ (Debian's python3-torch where PyPI cannot be reached); the bench
scripts find it through scripts/reference/torch_python.sh. Its best CPU setting,
which the defaults give where this PyTorch has it:
  --threads     chargpt's default: every hardware thread (torch.set_num_threads)
  --compile     torch.compile (inductor: generated C++ kernels, which needs a C++
                compiler) for forward and backward. auto: compile, then time a few
                steps each way (--compile-probe) and keep the faster; a compile
                that fails falls back to eager (on: no timing). Evaluation runs
                eager (other shapes would recompile). PyTorch 1.x has none.
  --attention   sdpa: F.scaled_dot_product_attention(is_causal=True), PyTorch's
                fused attention (2.0+); manual: the explicit masked softmax
  AdamW         fused=True (2.4+ on the CPU), else PyTorch's default (foreach)
  --bf16        forward and loss under torch.autocast("cpu", dtype=torch.bfloat16)
                (weights and optimizer stay fp32); faster only where the CPU has
                bf16 instructions (AVX512-BF16, AMX), so the callers measure both
  OPENBLAS_NUM_THREADS=1 unless the environment sets it: Debian's torch does
                its products in OpenBLAS, whose own threads on top of torch's
                oversubscribe the cores (PyPI's wheel uses oneDNN and MKL instead)
Both commands print that setting and the PyTorch version (stderr, and in the JSON).
--device cuda runs the same steps on the GPU (autocast "cuda" with --bf16; auto
compile means off there); the batches are still drawn on the CPU with the same
generator, then copied over, and each timed step ends with loss.item(), which
waits for the GPU.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before torch loads OpenBLAS

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("torch_gpt_ref: PyTorch is not installed for this Python ("
             f"{sys.executable}); scripts/setup_torch_peer.sh installs one into .venv-torch/")
from torch_steps import Stepper, autocast, get_batch, make_optimizer  # noqa: E402


# ---- The model --------------------------------------------------------------------

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size, sdpa):
        super().__init__()
        self.n_head = n_head
        self.sdpa = sdpa
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, block_size, block_size), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size, sdpa):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, sdpa)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, sdpa=False):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} must be divisible by n_head {n_head}")
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([Block(n_embd, n_head, block_size, sdpa) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd, eps=1e-5),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        # nanoGPT's init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0, LayerNorm 1/0
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets=None):
        B, T = idx.shape
        assert T <= self.block_size
        tr = self.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device))
        for block in tr.h:
            x = block(x)
        logits = self.lm_head(tr.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


# ---- Data, optimizer, schedule ------------------------------------------------------

def load_splits(path):
    """chargpt's split: the vocabulary is the text's code points, sorted; the
    first 90% of the characters train, the rest validate."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        sys.exit(f"torch_gpt_ref: cannot read data '{path}': {e.strerror}"
                 " (scripts/fetch_data.sh puts Tiny Shakespeare at data/tinyshakespeare.txt)")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    n_train = int(len(data) * 0.9)
    return vocab, data[:n_train], data[n_train:]


def lr_at(it, a, decay_steps):
    """nanoGPT's (and chargpt's lr_at): linear warmup, cosine to min_lr, then min_lr."""
    if it < a.lr_warmup:
        return a.lr * (it + 1) / (a.lr_warmup + 1)
    if it > decay_steps or decay_steps <= a.lr_warmup:
        return a.min_lr
    ratio = (it - a.lr_warmup) / (decay_steps - a.lr_warmup)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)


@torch.no_grad()
def estimate_loss(model, data, a, g):
    model.eval()
    losses = []
    for _ in range(a.eval_iters):
        x, y = get_batch(data, a.B, a.T, g, a.device)
        with autocast(a):
            losses.append(model(x, y)[1].item())
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def exact_loss(model, data, a):
    """`chargpt eval`'s loss: windows of T at 0, T, 2T, ... (the last one shorter),
    so that every target of the split counts once; mean over targets."""
    model.eval()
    T = a.T
    n_targets = len(data) - 1
    full = n_targets // T
    total = 0.0
    chunk = 256  # windows per forward pass
    for s in range(0, full, chunk):
        e = min(full, s + chunk)
        x = data[s * T:e * T].view(e - s, T).to(a.device)
        y = data[s * T + 1:e * T + 1].view(e - s, T).to(a.device)
        with autocast(a):
            total += model(x, y)[1].item() * (e - s) * T
    tail = n_targets - full * T
    if tail:
        x = data[full * T:full * T + tail].view(1, tail).to(a.device)
        y = data[full * T + 1:full * T + 1 + tail].view(1, tail).to(a.device)
        with autocast(a):
            total += model(x, y)[1].item() * tail
    model.train()
    return total / n_targets


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(a):
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"torch_gpt_ref: --device cuda, but this PyTorch ({torch.__version__}) sees no CUDA device")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    vocab, train_data, val_data = load_splits(a.data)
    if len(train_data) <= a.T + 1 or len(val_data) <= 1:
        sys.exit(f"torch_gpt_ref: '{a.data}' is too short for block size {a.T}")
    sdpa = a.attention == "sdpa" and HAVE_SDPA
    a.attention_used = "sdpa" if sdpa else ("manual (this PyTorch has no sdpa)" if a.attention == "sdpa" else "manual")
    model = GPT(len(vocab), a.T, a.L, a.H, a.C, sdpa=sdpa).to(a.device)
    model.train()
    opt, a.adamw = make_optimizer(model, a)
    return vocab, train_data, val_data, model, opt, torch.Generator().manual_seed(a.seed)


def setting(a, stepper):
    """The setting in words, for the logs."""
    return (f"PyTorch {torch.__version__}, {a.device}, {a.threads} threads, "
            f"{'bf16 autocast' if a.bf16 else 'fp32'}, torch.compile {stepper.compile}, "
            f"attention {a.attention_used}, AdamW {a.adamw}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")


def describe(a, model, vocab, stepper):
    out = {"peer": "pytorch", "torch": torch.__version__, "threads": a.threads,
           "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "bf16": a.bf16,
           "compile": stepper.compile, "compiled": stepper.forward is not stepper.model,
           "compile_seconds": None if stepper.compile_seconds is None else round(stepper.compile_seconds, 1),
           "attention": a.attention_used, "adamw": a.adamw, "setting": setting(a, stepper),
           "config": {"n_layer": a.L, "n_head": a.H, "n_embd": a.C, "block_size": a.T, "batch_size": a.B,
                      "vocab_size": len(vocab)},
           "parameters": sum(p.numel() for p in model.parameters())}
    if a.device == "cuda":
        out.update({"device": "cuda", "gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                    "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)})
    return out


# ---- Commands -------------------------------------------------------------------------

def cmd_bench(a):
    vocab, train_data, _, model, opt, g = setup(a)
    stepper = Stepper(model, opt, train_data, a, g)
    it = 0  # a constant lr, as chargpt bench's
    while it < a.warmup or not stepper.settled():  # untimed; the compile and --compile auto's probe too
        stepper(it, a.lr)
        it += 1
    print(f"torch_gpt_ref bench: {setting(a, stepper)}", file=sys.stderr, flush=True)
    times, losses = [], []
    for k in range(a.steps):
        loss, _, dt = stepper(it + k, a.lr)
        times.append(dt)
        losses.append(loss)
    ms = 1000 * statistics.median(times)
    out = describe(a, model, vocab, stepper)
    out.update({"steps": a.steps, "warmup": it, "ms_per_step": round(ms, 3),
                "ms_min": round(1000 * min(times), 3), "ms_max": round(1000 * max(times), 3),
                "tok_per_s": round(a.B * a.T / (ms / 1000), 1), "loss": round(losses[-1], 4),
                "loss_tail_mean": round(statistics.mean(losses[-5:]), 4),
                "peak_rss_mib": round(peak_rss_mib(), 1)})
    print(json.dumps(out))


def cmd_train(a):
    vocab, train_data, val_data, model, opt, g = setup(a)
    stepper = Stepper(model, opt, train_data, a, g)
    decay_steps = a.lr_decay_steps if a.lr_decay_steps > 0 else a.steps
    eval_g = torch.Generator().manual_seed(a.seed + 1)
    log = sys.stderr
    print(f"torch_gpt_ref train: {sum(p.numel() for p in model.parameters())} parameters "
          f"(L={a.L} H={a.H} C={a.C} T={a.T} V={len(vocab)}), batch {a.B}, {a.threads} threads, "
          f"{a.steps} steps; {setting(a, stepper)}", file=log, flush=True)
    first_loss = loss = float("nan")
    val_est = train_est = float("nan")
    t0 = time.perf_counter()
    for it in range(a.steps):
        step = it + 1
        loss, _, _ = stepper(it, lr_at(it, a, decay_steps))
        if not math.isfinite(loss):
            sys.exit(f"torch_gpt_ref: non-finite loss at step {step}")
        if step == 1:
            first_loss = loss
        if a.eval_interval > 0 and (step % a.eval_interval == 0 or step == a.steps):
            train_est = estimate_loss(model, train_data, a, eval_g)
            val_est = estimate_loss(model, val_data, a, eval_g)
            print(f"step {step}/{a.steps}: train loss {train_est:.4f}, val loss {val_est:.4f} (estimates), "
                  f"{time.perf_counter() - t0:.1f} s", file=log, flush=True)
        elif step % a.log_interval == 0:
            print(f"step {step}/{a.steps}  loss {loss:.4f}", file=log, flush=True)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    val = exact_loss(model, val_data, a)
    eval_s = time.perf_counter() - t1
    print(f"trained {a.steps} steps in {train_s:.1f} s; val loss {val:.4f} (exact, {eval_s:.1f} s)",
          file=log, flush=True)
    print(f"torch_gpt_ref train: {setting(a, stepper)}", file=log, flush=True)
    out = describe(a, model, vocab, stepper)
    out.update({"steps": a.steps, "train_seconds": round(train_s, 2), "first_loss": round(first_loss, 4),
                "last_loss": round(loss, 4), "train_loss_estimate": round(train_est, 4),
                "val_loss_estimate": round(val_est, 4), "val_loss": round(val, 4),
                "eval_seconds": round(eval_s, 2), "peak_rss_mib": round(peak_rss_mib(), 1)})
    print(json.dumps(out))


def main():
    common = argparse.ArgumentParser(add_help=False)
    m = common.add_argument_group("model (defaults: chargpt's baby preset)")
    m.add_argument("-L", "--n-layer", dest="L", type=int, default=4)
    m.add_argument("-H", "--n-head", dest="H", type=int, default=4)
    m.add_argument("-C", "--n-embd", dest="C", type=int, default=128)
    m.add_argument("-T", "--block-size", dest="T", type=int, default=64)
    m.add_argument("-B", "--batch-size", dest="B", type=int, default=12)
    t = common.add_argument_group("training (defaults: chargpt train's)")
    t.add_argument("--data", default="data/tinyshakespeare.txt")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--min-lr", type=float, default=1e-4)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.99)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=1337)
    r = common.add_argument_group("run")
    r.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch.set_num_threads (default: every hardware thread, as chargpt's --threads 0)")
    r.add_argument("--bf16", action="store_true", help="bf16 autocast for forward and loss")
    r.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile forward and backward (auto: where it compiles and is faster; "
                        "a failed compile always falls back to eager)")
    r.add_argument("--compile-probe", type=int, default=2,
                   help="--compile auto: steps timed each way, eager and compiled alternately")
    r.add_argument("--attention", choices=("sdpa", "manual"), default="sdpa",
                   help="sdpa: PyTorch's fused causal attention (2.0+); manual: masked softmax")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model and the steps run (cuda: the first GPU that PyTorch sees)")

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", parents=[common], help="time training steps; one JSON line",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--steps", type=int, default=30, help="timed steps")
    b.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    b.set_defaults(func=cmd_bench)
    tr = sub.add_parser("train", parents=[common], help="train, then the exact val loss; JSON at the end",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--warmup", dest="lr_warmup", type=int, default=100, help="linear warmup steps")
    tr.add_argument("--lr-decay-steps", type=int, default=0, help="cosine length (0 = --steps)")
    tr.add_argument("--eval-interval", type=int, default=250, help="loss estimates every N steps (0 = none)")
    tr.add_argument("--eval-iters", type=int, default=20, help="batches per estimate")
    tr.add_argument("--log-interval", type=int, default=100, help="steps between loss lines (stderr)")
    tr.set_defaults(func=cmd_train)
    a = ap.parse_args()
    if a.compile_probe < 0:
        ap.error("--compile-probe must be >= 0")
    for name in ("L", "H", "C", "T", "B", "threads", "steps"):
        if getattr(a, name) < 1:
            ap.error(f"{name} must be >= 1")
    a.func(a)


if __name__ == "__main__":
    main()
