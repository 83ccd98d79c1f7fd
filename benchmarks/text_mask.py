"""Tiny Shakespeare, character level: the absorbing (mask) diffusion model against an autoregressive anchor.

Both models are the same :class:`udm.nets.SequenceTransformer` (same width,
depth, heads, context, optimizer, batch and number of steps); only the
attention (bidirectional vs causal) and the objective differ:

* mask model (THEORY §4.4): the continuous-time absorbing process with m(t) = t,
  trained with the ELBO-weighted cross-entropy of :class:`udm.objectives.CrossEntropyLoss`;
  its validation figure is an *upper bound* on -log p(window) / L: the ELBO
  estimated by Monte Carlo over t (stratified) with its standard error;
* autoregressive model: a begin-of-window token, then next-character
  prediction with causal attention; its figure is the *exact* -log p(window) / L.

Both are bits per character on the same held-out windows: the last 10% of the
text (the 90/10 split of nanoGPT's shakespeare_char). The external anchor is
nanoGPT's CPU "baby GPT" (4 layers, 4 heads, width 128, context 64, 2000
iterations of batch 12), whose README reports validation loss 1.88 nats/char
= 2.71 bits/char; its validation windows are drawn at random positions of the
same last 10%, and every target there except the first of a window has a
context, so it is comparable to our AR figure, not identical.

Run: ``python benchmarks/text_mask.py`` (about 12 minutes on 2 CPU cores: 3000 steps of batch 32 each);
``--steps``, ``--device cuda`` and ``--hidden/--depth`` scale it up.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import udm
from udm.data import load_dataset
from udm.denoiser import TokenDenoiser
from udm.objectives import CrossEntropyLoss
from udm.nets import SequenceTransformer


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.1 * lr + 0.9 * lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(model, loss_fn, train_x, steps, batch, lr, seed, device) -> tuple[float, list[float]]:
    """AdamW with warm-up and cosine decay; returns (seconds, losses every 100 steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    curve, start = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(train_x), (batch,), generator=gen)
        loss = loss_fn(train_x[idx].to(device), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, steps // 20)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            curve.append(float(loss.detach()))
    return time.perf_counter() - start, curve


@torch.no_grad()
def mask_elbo_bpc(denoiser, loss: CrossEntropyLoss, val_x, draws: int, device) -> tuple[float, float]:
    """Monte-Carlo ELBO (bits/char) over the validation windows: ``draws`` stratified times per window."""
    process = denoiser.process
    per_window = []
    gen = torch.Generator().manual_seed(1234)
    for lo in range(0, len(val_x), 256):
        x0 = val_x[lo : lo + 256].to(device)
        acc = torch.zeros(len(x0), dtype=torch.float64)
        for k in range(draws):
            u = (k + torch.rand(len(x0), generator=gen, dtype=torch.float64)) / draws
            t = (process.t_eps + (process.t_max - process.t_eps) * u).to(device)
            eps = process.sample_noise(x0.shape, gen, device=device)
            out = loss(denoiser, x0, t=t, w=torch.ones_like(t), eps=eps.to(device))
            acc += out.objective.double().cpu()
        per_window.append(acc / draws)
    v = torch.cat(per_window) / math.log(2)
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


class Autoregressive(torch.nn.Module):
    """The same transformer with causal attention, a begin token (id V) and next-character targets."""

    def __init__(self, vocab: int, seq_len: int, **kw) -> None:
        super().__init__()
        self.vocab = vocab
        self.net = SequenceTransformer(vocab + 1, seq_len, causal=True, **kw)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([torch.full_like(x[:, :1], self.vocab), x[:, :-1]], dim=1)
        return self.net(inp, torch.zeros(len(x), device=x.device))[..., : self.vocab]

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(window) / L in nats, per window."""
        return F.cross_entropy(self.logits(x).transpose(1, 2).float(), x, reduction="none").mean(1)

    @torch.no_grad()
    def sample(self, n: int, seq_len: int, gen: torch.Generator, device) -> torch.Tensor:
        x = torch.zeros(n, seq_len, dtype=torch.long, device=device)
        for i in range(seq_len):
            probs = torch.softmax(self.logits(x)[:, i].float(), -1).cpu()
            x[:, i] = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
        return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--draws", type=int, default=8, help="Monte-Carlo times per validation window for the ELBO")
    ap.add_argument("--val-windows", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    data = load_dataset("tinyshakespeare", seq_len=args.seq_len)
    train_set, val_set = data.split(0.1)
    vocab, L = data.vocab_size, args.seq_len
    val_x = val_set.x[: args.val_windows]
    print(f"Tiny Shakespeare: vocabulary {vocab}, {len(train_set)} train / {len(val_set)} held-out windows of {L} characters; "
          f"evaluating on the first {len(val_x)} held-out windows")
    kw = dict(hidden=args.hidden, depth=args.depth, num_heads=args.heads)

    process = udm.get_process("mask", vocab_size=vocab, seq_len=L, schedule="linear")
    mask_net = SequenceTransformer(process.input_vocab_size, L, time_scale=1000.0, **kw).to(device)
    denoiser = TokenDenoiser(mask_net, process)
    loss = CrossEntropyLoss("elbo")
    secs_m, curve_m = train(mask_net, lambda x, g: loss(denoiser, x, generator=g).loss, train_set.x, args.steps, args.batch,
                            args.lr, args.seed, device)
    mask_net.eval()
    bpc_m, se_m = mask_elbo_bpc(denoiser, loss, val_x, args.draws, device)

    ar = Autoregressive(vocab, L, **kw).to(device)
    secs_a, curve_a = train(ar, lambda x, g: ar.nll(x).mean(), train_set.x, args.steps, args.batch, args.lr, args.seed, device)
    ar.eval()
    with torch.no_grad():
        nll = torch.cat([ar.nll(val_x[i : i + 256].to(device)).cpu() for i in range(0, len(val_x), 256)]) / math.log(2)
    bpc_a, se_a = float(nll.mean()), float(nll.std() / math.sqrt(len(nll)))

    n_m = sum(p.numel() for p in mask_net.parameters())
    n_a = sum(p.numel() for p in ar.parameters())
    print(f"\n{'model':<34}{'params':>9}{'steps':>7}{'train s':>9}{'val bits/char':>16}")
    print(f"{'mask diffusion (ELBO, upper bound)':<34}{n_m:>9,}{args.steps:>7}{secs_m:>9.0f}{bpc_m:>10.3f} ± {se_m:.3f}")
    print(f"{'autoregressive (exact)':<34}{n_a:>9,}{args.steps:>7}{secs_a:>9.0f}{bpc_a:>10.3f} ± {se_a:.3f}")
    print(f"{'nanoGPT baby GPT, CPU (README)':<34}{'~0.8M':>9}{2000:>7}{'':>9}{1.88 / math.log(2):>10.3f}   (batch 12)")
    print(f"training-loss curves (every 100 steps): mask {[round(v, 2) for v in curve_m]}\n  AR {[round(v, 2) for v in curve_a]}")

    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        x = udm.sample(denoiser, "udm_deterministic", steps=L, shape=(3, L), generator=gen, device=device)
        y = ar.sample(3, L, gen, device)
    for name, batch in (("mask diffusion, one position per step on average (K1)", x), ("autoregressive", y)):
        print(f"\n--- samples: {name} ---")
        for text in data.decode(batch.cpu()):
            print(repr(text))


if __name__ == "__main__":
    main()
