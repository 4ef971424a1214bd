"""Training steps at PyTorch's fastest CPU setting, for torch_gpt_ref.py: AdamW fused where this PyTorch
has it, forward and backward torch.compile'd where that compiles (and, with --compile auto, where it is
measured faster than eager), bf16 autocast on request. See torch_gpt_ref.py's --help."""
import statistics
import sys
import time

import torch


def get_batch(data, B, T, g, device):
    ix = torch.randint(len(data) - T, (B,), generator=g)
    x = torch.stack([data[i:i + T] for i in ix.tolist()])
    y = torch.stack([data[i + 1:i + 1 + T] for i in ix.tolist()])
    return x.to(device), y.to(device)


def make_optimizer(model, a):
    decay = [p for p in model.parameters() if p.dim() >= 2]  # weights and embeddings
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and LayerNorm
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # one vectorised kernel over all parameters: PyTorch's fastest AdamW on the CPU (2.4+)
        return torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=1e-8, fused=True), "fused"
    except (TypeError, RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=1e-8), "default"


def autocast(a):
    if a.bf16:
        return torch.autocast(a.device, dtype=torch.bfloat16)
    return torch.autocast(a.device, enabled=False)


def train_step(forward, model, opt, data, a, g, lr):
    """One optimizer step; forward is the model itself or its torch.compile'd twin (same parameters)."""
    for group in opt.param_groups:
        group["lr"] = lr
    x, y = get_batch(data, a.B, a.T, g, a.device)
    with autocast(a):
        _, loss = forward(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip) if a.grad_clip > 0 else None
    opt.step()
    return loss.item(), norm


def first_line(e):
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class Stepper:
    """Training steps at the fastest setting this PyTorch has: torch.compile'd where it compiles (and,
    with --compile auto, where it is measured faster than eager), else eager. Each call is one real
    optimizer step; `compile` says what was used and why."""

    def __init__(self, model, opt, data, a, g):
        self.model, self.opt, self.data, self.a, self.g = model, opt, data, a, g
        self.forward = model
        self.mode = a.compile if not (a.compile == "auto" and a.device != "cpu") else "off"
        self.compile = {"off": "off", "on": "on (the first step compiles)",
                        "auto": "auto (the first step compiles)"}[a.compile]
        if self.mode == "off" and a.compile == "auto":
            self.compile = "off (auto: the CPU only)"
        self.probe = {"eager": [], "compiled": []}
        self.compile_seconds = None
        self.state = "settled"
        if self.mode != "off":
            if not hasattr(torch, "compile"):
                self.compile = f"off (PyTorch {torch.__version__} has no torch.compile)"
            else:
                self.compiled = torch.compile(model)
                self.forward = self.compiled
                self.state = "first"

    def settled(self):
        return self.state == "settled"

    def __call__(self, it, lr):
        """One step; returns (loss, grad norm, seconds)."""
        if self.state == "first":  # the compile happens in this step
            rng = self.g.get_state()
            t0 = time.perf_counter()
            try:
                loss, norm = train_step(self.compiled, self.model, self.opt, self.data, self.a, self.g, lr)
            except Exception as e:  # any failure of the compiler stack: this step again, eager
                self.g.set_state(rng)
                self.forward, self.state = self.model, "settled"
                self.compile = f"off (torch.compile failed: {first_line(e)})"
                print(f"torch_gpt_ref: torch.compile failed, running eager: {first_line(e)}",
                      file=sys.stderr, flush=True)
                return self(it, lr)
            self.compile_seconds = time.perf_counter() - t0
            self.compile = "inductor"
            self.state = "probe" if self.mode == "auto" and self.a.compile_probe > 0 else "settled"
            return loss, norm, self.compile_seconds
        if self.state == "probe":  # eager, compiled, eager, compiled, ...: drift hits both alike
            side = "eager" if len(self.probe["eager"]) == len(self.probe["compiled"]) else "compiled"
            forward = self.model if side == "eager" else self.compiled
            loss, norm, dt = self.timed(forward, lr)
            self.probe[side].append(dt)
            if len(self.probe["compiled"]) == self.a.compile_probe:
                eager = statistics.median(self.probe["eager"]) * 1000
                comp = statistics.median(self.probe["compiled"]) * 1000
                if comp <= eager:
                    self.compile = f"inductor (auto: {comp:.1f} ms/step compiled, {eager:.1f} eager)"
                else:
                    self.forward = self.model
                    self.compile = f"off (auto: eager {eager:.1f} ms/step, compiled {comp:.1f}: slower)"
                print(f"torch_gpt_ref: torch.compile {self.compile}", file=sys.stderr, flush=True)
                self.state = "settled"
            return loss, norm, dt
        return self.timed(self.forward, lr)

    def timed(self, forward, lr):
        if self.a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, norm = train_step(forward, self.model, self.opt, self.data, self.a, self.g, lr)
        return loss, norm, time.perf_counter() - t0
