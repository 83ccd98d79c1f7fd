"""The encoder ("VAE-like") model of THEORY §4.5: x_t = alpha_t F(x0) + sigma_t eps with a trainable F.

* shapes: data (B, L) -> state (B, L, d) -> logits (B, L, V); the prior's scale; config round trip;
* F is linear in the one-hot (F(one_hot(x)) = F(x)) and has unit-RMS rows whatever the weights' scale;
* inversion F_t^{-1}(x0, F_t(x0, eps)) = eps in float64, from ids and from probabilities (THEORY §3.3);
* kernel marginal test in latent space: with the TRUE x0, K1/K2 send p(x_t | x0) to p(x_s | x0)
  (moments against direct draws of F_s, fixed seeds; THEORY §3.3);
* x0 estimates: "mean" is the softmax, "sample" draws from it; ``finish`` returns token ids;
* errors: bad token ids, an unbound process, a network without an encoder, bad shapes;
* end to end on an enumerable toy (V = 3, L = 4): LatentTransformer and its encoder trained
  jointly by cross-entropy, then ``udm.sample(..., "udm")`` must produce token ids whose
  distribution is far closer to the data (exact TV over all 81 sequences) than the uniform
  distribution or the product of the data's marginals.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import udm
from udm.denoiser import TokenDenoiser
from udm.kernels import KERNELS
from udm.objectives import CrossEntropyLoss
from udm.nets.latent import LatentTransformer, TokenEncoder
from udm.processes.encoder import EncoderProcess

V, L, D = 3, 4, 4


def _bound(x0_estimate: str = "mean", dtype: torch.dtype = torch.float32, seed: int = 0, **options):
    torch.manual_seed(seed)
    net = LatentTransformer(V, L, latent_dim=D, hidden=16, depth=1, num_heads=2).to(dtype)
    return EncoderProcess(V, latent_dim=D, x0_estimate=x0_estimate, **options).bind(net), net


def test_shapes_prior_and_config() -> None:
    p, net = _bound()
    assert p.state_shape((5, L)) == (5, L, D)
    assert p.output_shape((5, L, D)) == (5, L, V)
    x0 = torch.randint(0, V, (5, L), generator=torch.Generator().manual_seed(0))
    eps = p.sample_noise(p.state_shape(x0.shape), 0)
    x_t = p.corrupt(x0, 0.5, eps)
    assert x_t.shape == (5, L, D) and x_t.dtype == torch.float32
    logits = TokenDenoiser(net, p)(x_t, 0.5)
    assert logits.shape == (5, L, V)
    prior = p.prior(p.state_shape((4000, L)), 1)
    assert prior.shape == (4000, L, D)
    assert abs(float(prior.std()) - float(p.gaussian.sigma(p.t_max))) < 0.02
    assert (p.t_min, p.t_max, p.t_eps) == (p.gaussian.t_min, p.gaussian.t_max, p.gaussian.t_eps)
    cfg = p.config()
    assert cfg == {"vocab_size": V, "latent_dim": D, "schedule": "vp_cosine", "x0_estimate": "mean"}
    again = EncoderProcess(**cfg)
    assert again.config() == cfg and again.encoder is None
    ddpm = EncoderProcess(V, latent_dim=D, schedule="ddpm", num_train_steps=100)
    assert ddpm.t_max == 100.0 and ddpm.config()["num_train_steps"] == 100


def test_encoder_is_linear_in_one_hot_and_unit_rms() -> None:
    enc = TokenEncoder(V, D)
    x = torch.randint(0, V, (6, L), generator=torch.Generator().manual_seed(1))
    one_hot = nn.functional.one_hot(x, V).float()
    torch.testing.assert_close(enc(one_hot), enc(x))
    probs = torch.softmax(torch.randn(6, L, V, generator=torch.Generator().manual_seed(2)), -1)
    expected = sum(probs[..., k : k + 1] * enc(torch.full_like(x, k)) for k in range(V))
    torch.testing.assert_close(enc(probs), expected)
    rms = enc.table().pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(V))
    before = enc(x)
    with torch.no_grad():
        enc.weight.mul_(25.0)
    torch.testing.assert_close(enc(x), before)


def test_recover_noise_inverts_corrupt_float64() -> None:
    p, _ = _bound(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, V, (7, L), generator=g)
    probs = torch.softmax(torch.randn(7, L, V, generator=g, dtype=torch.float64), -1)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    for clean in (x0, probs):
        eps = torch.randn(7, L, D, generator=g, dtype=torch.float64)
        for time in (t, 0.3):
            x_t = p.corrupt(clean, time, eps)
            assert x_t.dtype == torch.float64
            torch.testing.assert_close(p.recover_noise(clean, x_t, time), eps, rtol=0, atol=1e-12)
    eps = torch.randn(7, L, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        p.corrupt(nn.functional.one_hot(x0, V).double(), t, eps), p.corrupt(x0, t, eps), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(("kernel", "mix"), [("K1", 0.0), ("K2", 0.6)])
@pytest.mark.parametrize(("t", "s"), [(0.6, 0.5), (0.97, 0.05)])
def test_kernel_marginal_in_latent_space(kernel: str, mix: float, t: float, s: float) -> None:
    """With the true x0, K1/K2 map x_t ~ p(x_t | x0) to draws of p(x_s | x0) = N(alpha_s F(x0), sigma_s^2 I)."""
    p, _ = _bound(dtype=torch.float64)
    n = 20000
    x0 = torch.tensor([[0, 2, 1, 2]]).expand(n, L)
    x_t = p.corrupt(x0, t, p.sample_noise((n, L, D), 4, dtype=torch.float64))
    with torch.no_grad():
        x_s = KERNELS.get(kernel)(p, x_t, x0, t, s, mix=mix, generator=5)
        direct = p.corrupt(x0, s, p.sample_noise((n, L, D), 6, dtype=torch.float64))
        mean = float(p.gaussian.alpha(s)) * p.encode(x0[:1])[0]
    sigma_s = float(p.gaussian.sigma(s))
    se = sigma_s / n**0.5
    for draws in (x_s, direct):
        assert (draws.mean(0) - mean).abs().max() < 5 * se
        assert (draws.std(0) / sigma_s - 1).abs().max() < 0.035
    assert (x_s.mean(0) - direct.mean(0)).abs().max() < 7 * se
    if kernel == "K1":
        eps = p.recover_noise(x0, x_t, t)
        torch.testing.assert_close(x_s, mean + sigma_s * eps, rtol=0, atol=1e-12)


def test_x0_estimates_and_finish() -> None:
    p_mean, net = _bound("mean")
    p_sample = EncoderProcess(V, latent_dim=D, x0_estimate="sample").bind(net)
    x_t = torch.zeros(3000, L, D)
    logits = torch.tensor([0.0, 1.0, -1.0]).expand(3000, L, V)
    probs = p_mean.estimate_x0(logits, x_t, 0.5)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    torch.testing.assert_close(p_mean.finish(x_t, probs), torch.ones(3000, L, dtype=torch.long))
    ids = p_sample.estimate_x0(logits, x_t, 0.5, generator=7)
    assert ids.dtype == torch.long and ids.shape == (3000, L)
    freq = torch.bincount(ids.flatten(), minlength=V).double() / ids.numel()
    assert (freq - torch.softmax(logits[0, 0].double(), -1)).abs().max() < 0.015
    torch.testing.assert_close(p_sample.finish(x_t, ids), ids)
    gens = [torch.Generator().manual_seed(k) for k in range(4)]
    one = p_sample.estimate_x0(logits[:4], x_t[:4], 0.5, generator=[torch.Generator().manual_seed(2)] * 4)
    many = p_sample.estimate_x0(logits[:4], x_t[:4], 0.5, generator=gens)
    torch.testing.assert_close(one[0], many[2])
    passed = torch.randint(0, V, (5, L))
    assert p_mean.estimate_x0(passed, x_t[:5], 0.5) is passed


def test_sample_returns_tokens_of_the_last_estimate() -> None:
    """The generic ``udm`` loop ends on finish(x, x0_hat): argmax of the last probabilities, as ids (B, L)."""
    p, _ = _bound()
    target = torch.tensor([2, 0, 1, 1])

    def decoder(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 4.0 * nn.functional.one_hot(target, V).float().expand(x.shape[0], L, V)

    for kernel in ("K0", "K1", "K2"):
        out = udm.sample(TokenDenoiser(decoder, p), "udm", steps=4, shape=(6, L), kernel=kernel, mix=0.5, generator=0)
        assert out.dtype == torch.long and out.shape == (6, L)
        assert (out == target).all()


def test_bad_token_ids_and_shapes() -> None:
    p, net = _bound()
    eps = torch.zeros(2, L, D)
    with pytest.raises(ValueError, match=r"token id 3 is out of range \[0, 2\]"):
        p.corrupt(torch.tensor([[0, 1, 3, 2], [0, 0, 0, 0]]), 0.5, eps)
    with pytest.raises(ValueError, match=r"token id -1 is out of range \[0, 2\]"):
        p.recover_noise(torch.tensor([[0, -1, 1, 2], [0, 0, 0, 0]]), eps, 0.5)
    with pytest.raises(ValueError, match=r"token id 5 is out of range \[0, 2\]"):
        TokenEncoder(V, D)(torch.tensor([5]))
    with pytest.raises(ValueError, match="probabilities over the vocabulary"):
        p.corrupt(torch.zeros(2, L), 0.5, eps)
    with pytest.raises(ValueError, match="eps has shape"):
        p.corrupt(torch.zeros(2, L, dtype=torch.long), 0.5, torch.zeros(2, L))
    with pytest.raises(ValueError, match="latent state shape"):
        p.prior((2, L, D + 1), 0)
    with pytest.raises(ValueError, match=r"1 <= L <= 4"):
        net(torch.zeros(2, L + 1, D), 0.5)
    with pytest.raises(ValueError, match=r"\(B, L, 4\)"):
        net(torch.zeros(2, L, D + 1), 0.5)
    with pytest.raises(ValueError, match="process's encoder"):
        net(torch.zeros(2, L, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="floating latents"):
        net(torch.zeros(2, L, D, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="unknown x0_estimate"):
        EncoderProcess(V, x0_estimate="mode")
    with pytest.raises(ValueError, match="unknown process 'nope'"):
        EncoderProcess(V, schedule="nope")
    with pytest.raises(ValueError, match="cannot be built"):
        EncoderProcess(V, schedule="vp", colour=1)


def test_unbound_process_and_binding() -> None:
    unbound = EncoderProcess(V, latent_dim=D)
    x0 = torch.zeros(2, L, dtype=torch.long)
    with pytest.raises(ValueError, match=r"not bound to a network.*`encoder`"):
        unbound.corrupt(x0, 0.5, torch.zeros(2, L, D))
    with pytest.raises(ValueError, match="no `encoder` module"):
        unbound.bind(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="latent_dim=5 but the encoder process has latent_dim=4"):
        unbound.bind(LatentTransformer(V, L, latent_dim=5, hidden=8, depth=1, num_heads=1))
    net = LatentTransformer(V, L, latent_dim=D, hidden=8, depth=1, num_heads=1)
    bound = unbound.bind(net)
    assert bound is not unbound and unbound.encoder is None and bound.encoder is net.encoder

    class Wrapper(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    assert unbound.bind(Wrapper(net)).encoder is net.encoder
    # the network options the process dictates, and the token-process defaults
    assert unbound.network_options() == {"vocab_size": V, "latent_dim": D}
    assert unbound.input_vocab_size == V and bool(unbound.loss_positions(torch.zeros(2, L, D), x0).all())
    with pytest.raises(ValueError, match="not bound"):
        udm.sample(TokenDenoiser(net, unbound), "udm", steps=2, shape=(2, L))


# --- end to end: joint training of F and q(x0 | x_t), then sampling -------------------------------------

TRAIN_STEPS = 2000
STATES = torch.tensor(list(itertools.product(range(V), repeat=L)))


def _toy_distribution() -> torch.Tensor:
    """A correlated law over the 81 sequences: equal neighbours are favoured, x[0] = 0 and x[3] != x[0] + 1 too."""
    equal = (STATES[:, 1:] == STATES[:, :-1]).sum(1).double()
    logw = 2.5 * equal + 1.0 * (STATES[:, 0] == 0).double() - 1.0 * (STATES[:, 3] == (STATES[:, 0] + 1) % V).double()
    return torch.softmax(logw, 0)


def _tv(samples: torch.Tensor, p: torch.Tensor) -> float:
    code = (samples * V ** torch.arange(L - 1, -1, -1)).sum(1)
    q = torch.bincount(code, minlength=len(p)).double() / len(code)
    return float(0.5 * (q - p).abs().sum())


def _product_of_marginals(p: torch.Tensor) -> torch.Tensor:
    out = torch.ones_like(p)
    for i in range(L):
        marginal = torch.stack([p[STATES[:, i] == v].sum() for v in range(V)])
        out = out * marginal[STATES[:, i]]
    return out


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    p = _toy_distribution()
    net = LatentTransformer(V, L, latent_dim=D, hidden=32, depth=2, num_heads=2, time_scale=1000.0)
    process = EncoderProcess(V, latent_dim=D).bind(net)
    denoiser = TokenDenoiser(net, process)
    loss = CrossEntropyLoss("uniform")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, TRAIN_STEPS)
    gen = torch.Generator().manual_seed(1)
    before = net.encoder.weight.detach().clone()
    grad_norm = 0.0
    for _ in range(TRAIN_STEPS):
        x0 = STATES[torch.multinomial(p, 128, replacement=True, generator=gen)]
        out = loss(denoiser, x0, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        grad_norm = max(grad_norm, float(net.encoder.weight.grad.norm()))
        opt.step()
        schedule.step()
    net.eval()
    return net, p, before, grad_norm, float(out.loss.detach())


def test_joint_training_updates_the_encoder(trained) -> None:
    net, _, before, grad_norm, final_loss = trained
    assert grad_norm > 1e-4
    change = float((net.encoder.weight.detach() - before).abs().max())
    print(f"encoder weight change {change:.3f}, largest encoder grad norm {grad_norm:.3g}, final CE {final_loss:.3f}")
    assert change > 0.05
    assert final_loss < 0.6


@pytest.mark.parametrize(("x0_estimate", "kernel", "mix"), [("mean", "K1", 0.0), ("sample", "K2", 0.5)])
def test_end_to_end_samples_match_the_data(trained, x0_estimate: str, kernel: str, mix: float) -> None:
    net, p, _, _, _ = trained
    process = EncoderProcess(V, latent_dim=D, x0_estimate=x0_estimate).bind(net)
    with torch.no_grad():
        x = udm.sample(
            TokenDenoiser(net, process), "udm", steps=25, shape=(4000, L), kernel=kernel, mix=mix, generator=123
        )
    assert x.dtype == torch.long and x.shape == (4000, L)
    assert int(x.min()) >= 0 and int(x.max()) < V
    tv = _tv(x, p)
    tv_uniform = float(0.5 * (p - 1.0 / len(p)).abs().sum())
    tv_independent = float(0.5 * (_product_of_marginals(p) - p).abs().sum())
    print(
        f"{x0_estimate}/{kernel}: TV(generated, data) = {tv:.3f}; "
        f"uniform {tv_uniform:.3f}; product of marginals {tv_independent:.3f}"
    )
    assert tv < 0.3 * tv_uniform
    assert tv < 0.4 * tv_independent
