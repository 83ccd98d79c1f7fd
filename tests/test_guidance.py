"""Guidance (THEORY §2.3) on the analytic labelled mixture and on labelled point masses under several processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import udm
from udm.guidance import ClassifierFreeGuidance, ClassifierGuidance, EnergyGuidance
from udm.metrics import mmd
from udm.theory import GaussianMixture, PointMasses

F64 = torch.float64
GMM = GaussianMixture.isotropic([0.6, 0.3, 0.1], [[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]], [0.4, 0.3, 0.3])


class ExactNet(nn.Module):
    """The exact x0 of labelled data under ``process``: conditional for labels 0..K-1, unconditional for the null K."""

    def __init__(self, process, x0_given, classes: int) -> None:
        super().__init__()
        self.process, self.x0_given, self.null_class = process, x0_given, classes

    def forward(self, x, t_in, cond=None):
        t = t_in.to(F64)
        uncond = self.x0_given(x, t, None)
        if cond is None:
            return uncond
        y = cond.clamp(max=self.null_class - 1)
        return torch.where((cond == self.null_class)[:, None], uncond, self.x0_given(x, t, y))


def _gmm_denoiser(process) -> udm.Denoiser:
    return udm.Denoiser(ExactNet(process, lambda x, t, y: GMM.posterior_mean(x, t, process, y=y), 3), process, "x0")


def _classifier(process):
    return lambda x, t: torch.log(GMM.class_probs(x, t, process))


def _batch(seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, 2, generator=g, dtype=F64), 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)


def test_bayes_rule_for_the_score() -> None:
    """§2.3 test 1: grad log p_t(y | x) + grad log p_t(x) = grad log p_t(x | y), to machine precision."""
    process = udm.get_process("vp")
    x, t, y = _batch(0)
    xg = x.clone().requires_grad_(True)
    log_py = torch.log(GMM.class_probs(xg, t, process)).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(log_py, xg)
    torch.testing.assert_close(g + GMM.score(x, t, process), GMM.score(x, t, process, y=y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "edm", "ve"])
def test_classifier_guidance_at_gamma_one_is_the_conditional_model(name: str) -> None:
    """x0 + (sigma^2/alpha) grad log p(y|x) is E[x0 | x_t, y] exactly (the x0 form of §2.1), for every Gaussian clock."""
    process = udm.get_process(name)
    x, t, y = _batch(1)
    t = process.t_eps + (process.t_max - process.t_eps) * (t - 0.05) / 0.9
    guided = ClassifierGuidance(_gmm_denoiser(process), _classifier(process), gamma=1.0)(x, t, y)
    torch.testing.assert_close(guided, GMM.posterior_mean(x, t, process, y=y), rtol=1e-9, atol=1e-9)


def test_cfg_with_w_is_classifier_guidance_with_gamma_one_plus_w() -> None:
    """§2.3 test 3: (1+w) eps_c - w eps_u = eps_u - (1+w) sigma grad log p(y|x): CFG(w) = classifier guidance(1 + w)."""
    process = udm.get_process("vp")
    den = _gmm_denoiser(process)
    x, t, y = _batch(2)
    for w in (0.0, 0.5, 3.0):
        cfg = ClassifierFreeGuidance(den, w)(x, t, y)
        cg = ClassifierGuidance(den, _classifier(process), gamma=1.0 + w)(x, t, y)
        torch.testing.assert_close(cfg, cg, rtol=1e-9, atol=1e-9)
        eps = lambda x0: udm.from_x0(x0, x, t, process, "eps")  # noqa: E731
        e_c, e_u = GMM.eps(x, t, process, y=y), GMM.eps(x, t, process)
        torch.testing.assert_close(eps(cfg), (1 + w) * e_c - w * e_u, rtol=1e-9, atol=1e-9)


def test_tempered_classifier_is_not_gamma_times_the_gradient() -> None:
    """§2.3 test 4: grad log(p^gamma / sum_y p^gamma) != gamma grad log p for gamma != 1 (Z depends on x_t)."""
    process = udm.get_process("vp")
    x, t, y = _batch(3)
    xg = x.clone().requires_grad_(True)
    logp = torch.log(GMM.class_probs(xg, t, process))
    gamma = 3.0
    (tempered,) = torch.autograd.grad(torch.log_softmax(gamma * logp, -1).gather(1, y[:, None]).sum(), xg, retain_graph=True)
    (plain,) = torch.autograd.grad(logp.gather(1, y[:, None]).sum(), xg)
    assert float((tempered - gamma * plain).norm(dim=1).max()) > 1e-2
    xg1 = x.clone().requires_grad_(True)  # at gamma = 1, Z = 1 and the two agree
    logp1 = torch.log(GMM.class_probs(xg1, t, process))
    (at_one,) = torch.autograd.grad(torch.log_softmax(logp1, -1).gather(1, y[:, None]).sum(), xg1)
    torch.testing.assert_close(at_one, plain, rtol=1e-9, atol=1e-12)


def test_guided_ode_draws_the_target_component_and_sharpens_with_gamma() -> None:
    """§2.3 tests 2 and 5: gamma = 1 gives component-k samples (moments, MMD vs exact draws); the share rises with gamma."""
    process = udm.get_process("vp")
    den = _gmm_denoiser(process)
    n, k = 1500, 2
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    exact = GMM.means[k] + 0.3 * torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    out = {}
    for gamma in (0.0, 0.5, 1.0, 2.0):
        out[gamma] = udm.sample(ClassifierGuidance(den, _classifier(process), gamma), "heun", steps=60, x_T=x_T, process=process,
                                cond=torch.full((n,), k), variable="sigma")
    x = out[1.0]
    se = 0.3 / n**0.5
    assert float((x.mean(0) - GMM.means[k]).abs().max()) < 5 * se
    torch.testing.assert_close(torch.cov(x.T), 0.09 * torch.eye(2, dtype=F64), atol=0.015, rtol=0)
    null = float(mmd(exact, GMM.means[k] + 0.3 * torch.randn(n, 2, generator=torch.Generator().manual_seed(6), dtype=F64)))
    assert float(mmd(x, exact)) < 3 * abs(null) + 1e-3
    share = [float((GMM.class_probs(out[g], 1e-3, process)[:, k] > 0.5).double().mean()) for g in (0.0, 0.5, 1.0, 2.0)]
    assert share[0] < share[1] < share[2] <= share[3] and share[0] < 0.2 and share[2] > 0.97, share


LABELLED = PointMasses([[-1.0, -1.0], [-1.0, 1.0], [1.0, 0.0], [1.5, 1.5]], [0.3, 0.3, 0.3, 0.1])
CLASSES = torch.tensor([0, 0, 0, 1])  # class 1 is the rare one (weight 0.1)


def _point_denoiser(process) -> udm.Denoiser:
    def x0_given(x, t, y):
        log_joint = LABELLED._log_joint(x, t, process)
        if y is not None:
            log_joint = log_joint.masked_fill(CLASSES[None] != y[:, None], -torch.inf)
        return torch.softmax(log_joint, -1) @ LABELLED.points

    return udm.Denoiser(ExactNet(process, x0_given, 2), process, "x0")


@pytest.mark.parametrize("name", ["vp", "edm", "rectified_flow", "pfgmpp"])
def test_the_same_guidance_code_serves_every_continuous_process(name: str) -> None:
    """CFG on exact labelled point masses: w = 0 is the conditional model and larger w lands more often on the rare class."""
    process = udm.get_process(name, D=64.0) if name == "pfgmpp" else udm.get_process(name)
    den = _point_denoiser(process)
    x, _, _ = _batch(7)
    t = torch.full((64,), 0.5 * process.t_max, dtype=F64)
    y = torch.ones(64, dtype=torch.long)
    torch.testing.assert_close(ClassifierFreeGuidance(den, 0.0)(x, t, y), den(x, t, y), rtol=1e-10, atol=1e-12)
    x_T = process.prior((800, 2), torch.Generator().manual_seed(8), dtype=F64)
    shares = []
    for w in (-1.0, 0.0, 2.0):
        x0 = udm.sample(ClassifierFreeGuidance(den, w), "heun", steps=40, x_T=x_T, process=process, cond=torch.ones(800, dtype=torch.long))
        nearest = torch.cdist(x0, LABELLED.points).argmin(1)
        shares.append(float((CLASSES[nearest] == 1).double().mean()))
    assert shares[0] < 0.2 and shares[1] > 0.9 and shares[2] >= shares[1], shares


def test_energy_guidance_moves_toward_the_energy() -> None:
    """G3: a user energy -|x - c|^2 / 2 shifts x0 by gamma (sigma^2/alpha)(c - x), and samples move toward c."""
    process = udm.get_process("vp")
    den = _gmm_denoiser(process)
    c = torch.tensor([0.0, 2.0], dtype=F64)
    energy = lambda x, t, y: -0.5 * ((x - c) ** 2).sum(1)  # noqa: E731
    x, t, _ = _batch(9)
    tt = t[:, None]
    expected = den(x, t) + 2.0 * (process.sigma(tt) ** 2 / process.alpha(tt)) * (c - x)
    torch.testing.assert_close(EnergyGuidance(den, energy, 2.0)(x, t), expected, rtol=1e-10, atol=1e-12)


def test_guidance_errors_are_clear() -> None:
    process = udm.get_process("vp")
    den = _gmm_denoiser(process)
    x, t, _ = _batch(10, n=4)
    with pytest.raises(ValueError, match="class 3 is outside the label set 0..2"):
        ClassifierFreeGuidance(den, 1.0)(x, t, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match="needs a condition"):
        ClassifierFreeGuidance(den, 1.0)(x, t)
    plain = udm.Denoiser(lambda a, b: a, process, "x0")
    with pytest.raises(ValueError, match="null label"):
        ClassifierFreeGuidance(plain, 1.0)
    with pytest.raises(ValueError, match="logits of shape"):
        ClassifierGuidance(den, lambda a, b: a.sum(1), 1.0)(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the label set"):
        ClassifierGuidance(den, _classifier(process), 1.0)(x, t, torch.full((4,), 5))


def test_guidance_interval_limits_cfg_to_a_noise_range() -> None:
    """Outside [lo, hi] (in sigma/alpha) the guided prediction is the conditional one; inside it is CFG's."""
    process = udm.get_process("edm")
    den = _gmm_denoiser(process)
    x, _, y = _batch(11)
    t = torch.cat([torch.full((32,), 0.5, dtype=F64), torch.full((32,), 5.0, dtype=F64)])
    out = ClassifierFreeGuidance(den, 2.0, interval=(1.0, 10.0))(x, t, y)
    torch.testing.assert_close(out[:32], den(x[:32], t[:32], y[:32]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[32:], ClassifierFreeGuidance(den, 2.0)(x[32:], t[32:], y[32:]), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(den, 2.0, interval=(3.0, 1.0))


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_training_drops_labels_to_the_null_class(tmp_path, p: float) -> None:
    """G4 step 1: each training label becomes the null label with probability train.cond_dropout (binomial bound)."""
    from udm.config import validate
    from udm.training import Trainer

    config = validate({
        "name": "cfg", "seed": 0, "data": {"name": "eight_gaussians", "n": 600}, "process": {"name": "vp"},
        "prediction": {"name": "eps"}, "network": {"name": "mlp", "hidden": 16, "depth": 2, "num_classes": 8},
        "train": {"steps": 20, "batch_size": 100, "log_every": 100, "cond_dropout": p},
    })
    trainer = Trainer(config, tmp_path, progress=False)
    seen = []

    class Recording:  # the trainer's loss, recording the labels it is given
        def __init__(self, loss) -> None:
            self.loss = loss

        def __getattr__(self, name):
            return getattr(self.loss, name)

        def __call__(self, den, x, cond, **kw):
            seen.append(cond.clone())
            return self.loss(den, x, cond, **kw)

    trainer.loss = Recording(trainer.loss)
    trainer.train()
    labels = torch.cat(seen)
    dropped = float((labels == 8).double().mean())
    assert abs(dropped - p) < 4 * (p * (1 - p) / labels.numel()) ** 0.5 + 1e-12, dropped
    assert int(labels.max()) <= 8 and (p > 0 or int(labels.max()) < 8)


def test_cfg_on_a_token_model_combines_log_probabilities() -> None:
    """Mask-model CFG: log p_u + (1 + w)(log p_c - log p_u), i.e. p ∝ p_c^(1+w) / p_u^w at every position."""
    from udm.denoiser import TokenDenoiser

    process = udm.get_process("mask", vocab_size=4, seq_len=3, schedule="linear")
    table = torch.randn(3, 3, 5, generator=torch.Generator().manual_seed(12))  # logits per (label or null, position, id)

    class Net(nn.Module):
        null_class = 2

        def forward(self, x, t, cond=None):
            return table[cond]

    den = TokenDenoiser(Net(), process)
    x = torch.full((2, 3), 4)
    y = torch.tensor([0, 1])
    out = ClassifierFreeGuidance(den, 1.5)(x, 0.5, y)
    logp = torch.log_softmax(table, -1)
    expected = 2.5 * logp[y] - 1.5 * logp[2]
    torch.testing.assert_close(torch.softmax(out, -1), torch.softmax(expected, -1), rtol=1e-5, atol=1e-6)


def test_gradient_guidance_where_alpha_vanishes_is_the_limit_of_the_guided_x0() -> None:
    """Rectified flow at t = 1 (alpha = 0): p(y | x_t) = p(y) and (sigma^2/alpha) grad is 0/0; the guide returns its limit.

    At gamma = 1 the guided x0 tends to E[x0 | y] (the class mean) as alpha -> 0; the shift is taken at
    sigma/alpha = 80, an error ~ 1/80 that shrinks 4x at sigma/alpha = 320. Below t = 1 nothing changes.
    """
    process = udm.get_process("rectified_flow")
    den = _gmm_denoiser(process)
    _, _, y = _batch(13)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(13), dtype=F64)  # x_1 ~ the prior N(0, I)
    guide = ClassifierGuidance(den, _classifier(process), gamma=1.0)
    at_end = guide(x, 1.0, y)
    assert bool(torch.isfinite(at_end).all())
    error = (at_end - GMM.means[y]).norm(dim=1)
    assert float(error.mean()) < 0.04 and float((den(x, 1.0) - GMM.means[y]).norm(dim=1).mean()) > 1.0
    finer = ClassifierGuidance(den, _classifier(process), gamma=1.0, endpoint_sigma_tilde=320.0)(x, 1.0, y)
    assert float((finer - GMM.means[y]).norm(dim=1).mean()) < 0.35 * float(error.mean())
    mixed = guide(x, torch.cat([torch.ones(32, dtype=F64), torch.full((32,), 0.5, dtype=F64)]), y)
    torch.testing.assert_close(mixed[:32], at_end[:32], rtol=0, atol=1e-12)
    torch.testing.assert_close(mixed[32:], GMM.posterior_mean(x[32:], 0.5, process, y=y[32:]), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="endpoint_sigma_tilde"):
        ClassifierGuidance(den, _classifier(process), endpoint_sigma_tilde=0.0)


def test_every_guide_samples_rectified_flow_from_its_default_grid() -> None:
    """The default grid of rectified flow starts at t = 1, where alpha = 0: classifier, energy and CFG guidance give
    finite samples there; classifier guidance at gamma = 1 follows the conditional model and sharpens with gamma."""
    process = udm.get_process("rectified_flow")
    den = _gmm_denoiser(process)
    n, k = 400, 2
    x_T = process.prior((n, 2), torch.Generator().manual_seed(14), dtype=F64)
    cond = torch.full((n,), k)
    run = lambda model: udm.sample(model, "heun", steps=20, x_T=x_T, process=process, cond=cond)  # noqa: E731
    conditional = run(den)
    shares = []
    for gamma in (0.0, 1.0, 2.0):
        x = run(ClassifierGuidance(den, _classifier(process), gamma))
        assert bool(torch.isfinite(x).all())
        shares.append(float((GMM.class_probs(x, 1e-3, process)[:, k] > 0.5).double().mean()))
        if gamma == 1.0:
            assert float((x - conditional).norm(dim=1).mean()) < 0.02
    assert shares[0] < 0.2 and shares[1] > 0.97 and shares[2] >= shares[1], shares
    c = torch.tensor([0.0, 2.0], dtype=F64)
    pulled = run(EnergyGuidance(den, lambda x, t, y: -0.5 * ((x - c) ** 2).sum(1), 0.3))
    plain = run(ClassifierGuidance(den, _classifier(process), 0.0))
    assert bool(torch.isfinite(pulled).all())
    assert float((pulled - c).norm(dim=1).mean()) < float((plain - c).norm(dim=1).mean())
    cfg = run(ClassifierFreeGuidance(den, 1.0))
    assert bool(torch.isfinite(cfg).all()) and float((GMM.class_probs(cfg, 1e-3, process)[:, k] > 0.5).double().mean()) > 0.97
