"""The networks of :mod:`udm.nets` (all tiny configurations, a few seconds on 2 CPU cores).

* output shapes for every network, including odd image sizes (28 -> 14 -> 7 -> 4, 7x7, 8x8);
* the DDPM CIFAR-10 UNet has diffusers' ``UNet2DModel`` parameter count and attention layout;
* t and class labels change the output once the zero-initialised layers are
  perturbed; ``time_scale`` only rescales t; ``cond=None`` is the null label;
* a few hundred Adam steps of the MLP on a denoising regression cut the loss;
* every parameter receives a gradient; bfloat16 autocast gives finite outputs;
* errors: wrong shapes, bad labels, a cond without a class embedding, unknown
  network names and arguments.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from udm.nets import (
    MLP,
    NETWORKS,
    ClassEmbedding,
    DiT,
    FourierEmbedding,
    SequenceTransformer,
    SinusoidalEmbedding,
    UNet,
    build_network,
)
from udm.nets.unet import AttentionBlock, num_groups

B = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these networks are tiny, and on a shared 2-core machine OpenMP
    threads spinning against other processes made this file ~20x slower (3 s -> 55 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unet(**kw) -> UNet:
    base = dict(in_channels=1, image_size=8, channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    return UNet(**{**base, **kw})


def _dit(**kw) -> DiT:
    base = dict(in_channels=1, image_size=8, patch_size=2, hidden=32, depth=2, num_heads=4)
    return DiT(**{**base, **kw})


def _seq(**kw) -> SequenceTransformer:
    base = dict(vocab_size=7, seq_len=12, hidden=32, depth=2, num_heads=4)
    return SequenceTransformer(**{**base, **kw})


def _mlp(**kw) -> MLP:
    base = dict(shape=(2,), hidden=32, depth=2, emb_dim=16)
    return MLP(**{**base, **kw})


# (factory, input maker): the four networks in small configurations.
NETS = {
    "mlp": (_mlp, lambda g: torch.randn(B, 2, generator=g)),
    "unet": (_unet, lambda g: torch.randn(B, 1, 8, 8, generator=g)),
    "dit": (_dit, lambda g: torch.randn(B, 1, 8, 8, generator=g)),
    "seq": (_seq, lambda g: torch.randint(0, 7, (B, 10), generator=g)),
}


def _randomize_zero_init(net: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every all-zero parameter (zero-initialised output layers, adaLN, norm biases) so signals pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def _build(name: str, **kw) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory, make_x = NETS[name]
    net = _randomize_zero_init(factory(**kw)).eval()
    return net, make_x(torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "net, x_shape",
    [
        (lambda: MLP((2,), hidden=32, depth=2), (B, 2)),
        (lambda: MLP((3, 4), hidden=32, depth=1, time_embedding="fourier"), (B, 3, 4)),
        (lambda: UNet(in_channels=1, image_size=8, channels=32, channel_mult=(1, 2)), (B, 1, 8, 8)),
        (lambda: UNet(in_channels=1, image_size=28, channels=16, channel_mult=(1, 2, 2), attn_resolutions=(7,)), (B, 1, 28, 28)),
        (
            lambda: UNet(
                in_channels=1, image_size=28, channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                attn_resolutions=(7, 4), resblock_updown=True, skip_rescale=True, scale_shift=True,
            ),
            (B, 1, 28, 28),
        ),
        (
            lambda: UNet(in_channels=3, out_channels=6, image_size=7, channels=16, channel_mult=(1, 2), num_res_blocks=1),
            (B, 3, 7, 7),
        ),
        (lambda: DiT(1, 8, patch_size=2, hidden=32, depth=1), (B, 1, 8, 8)),
        (lambda: DiT(1, 28, patch_size=4, hidden=32, depth=1), (B, 1, 28, 28)),
        (lambda: DiT(3, 7, patch_size=2, hidden=32, depth=1), (B, 3, 7, 7)),
    ],
)
def test_output_has_input_shape(net, x_shape):
    model = net()
    out = model(torch.randn(x_shape), torch.rand(B))
    expected = (B, model.out_channels, *x_shape[2:]) if isinstance(model, UNet) else x_shape
    assert out.shape == expected
    assert torch.isfinite(out).all()


def test_sequence_transformer_gives_logits_for_shorter_sequences():
    net = _seq()
    for length in (1, 5, 12):
        assert net(torch.randint(0, 7, (B, length)), torch.rand(B)).shape == (B, length, 7)


def test_zero_initialised_outputs():
    """Fresh networks predict exactly 0 (UNet, DiT, MLP) or uniform logits (sequences)."""
    x = torch.randn(B, 1, 8, 8)
    for net in (_unet(), _dit()):
        assert torch.equal(net(x, torch.rand(B)), torch.zeros_like(x))
    assert torch.equal(_mlp()(torch.randn(B, 2), torch.rand(B)), torch.zeros(B, 2))
    assert torch.equal(_seq()(torch.randint(0, 7, (B, 4)), torch.rand(B)), torch.zeros(B, 4, 7))


# ---------------------------------------------------------------- the CIFAR-10 configuration


def test_cifar10_unet_matches_diffusers_parameter_count():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ours = UNet(
            in_channels=3, image_size=32, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)
        )
        ref = diffusers.UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )
    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    assert 35e6 < n_ours < 36.5e6
    assert abs(n_ours - n_ref) / n_ref < 0.03, (n_ours, n_ref)
    # DDPM's layout: attention after both 16x16 down blocks, in the middle, and after the three 16x16 up blocks.
    assert sum(isinstance(m, AttentionBlock) for m in ours.modules()) == 6


@pytest.mark.parametrize("channels", [1, 3, 16, 32, 48, 64, 96, 128, 256, 320])
def test_group_norm_rule(channels):
    g = num_groups(channels)
    assert channels % g == 0 and 1 <= g <= 32
    assert g == 1 or channels // g >= 4
    if channels >= 128 and channels % 32 == 0:
        assert g == 32


# ---------------------------------------------------------------- conditioning


@pytest.mark.parametrize("name", list(NETS))
def test_time_changes_the_output(name):
    net, x = _build(name)
    t = torch.full((B,), 0.2)
    with torch.no_grad():
        a, a2, b = net(x, t), net(x, t.clone()), net(x, t + 0.5)
    assert torch.equal(a, a2)
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(NETS))
def test_time_scale_only_rescales_t(name):
    net, x = _build(name)
    scaled, _ = _build(name, time_scale=1000.0)
    scaled.load_state_dict(net.state_dict())
    t = torch.tensor([0.0, 0.25, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, t), net(x, 1000.0 * t))
        torch.testing.assert_close(net(x, 0.25), net(x, torch.full((B,), 0.25)))


@pytest.mark.parametrize("name", list(NETS))
def test_class_labels_change_the_output_and_none_is_null(name):
    net, x = _build(name, num_classes=4)
    assert net.null_class == 4
    t = torch.rand(B, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = net(x, t, torch.tensor([0, 1, 2]))
        b = net(x, t, torch.tensor([3, 2, 0]))
        none = net(x, t)
        null = net(x, t, torch.full((B,), net.null_class))
    assert ((a - b).flatten(1).abs().amax(1) > 1e-4).all()
    torch.testing.assert_close(none, null, rtol=0, atol=0)
    assert (none - a).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(NETS))
def test_bad_labels_raise(name):
    net, x = _build(name, num_classes=4)
    for bad, value in ((torch.tensor([0, 5, 1]), 5), (torch.tensor([-1, 0, 1]), -1)):
        with pytest.raises(ValueError, match=rf"class label {value} is out of range.*\[0, 4\]"):
            net(x, torch.rand(B), bad)
    with pytest.raises(ValueError, match="integer"):
        net(x, torch.rand(B), torch.zeros(B))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        net(x, torch.rand(B), torch.zeros(B + 1, dtype=torch.long))
    plain, _ = _build(name)
    assert plain.null_class is None
    with pytest.raises(ValueError, match="without a class embedding"):
        plain(x, torch.rand(B), torch.zeros(B, dtype=torch.long))


def test_class_embedding_reserves_the_null_row():
    emb = ClassEmbedding(10, 8)
    assert emb.null_class == 10 and emb.embedding.num_embeddings == 11
    torch.testing.assert_close(emb(None, 2), emb.embedding.weight[[10, 10]])


def test_time_embeddings():
    t = torch.tensor([0.0, 1.0, 7.5])
    sin = SinusoidalEmbedding(9)(t)
    assert sin.shape == (3, 9)
    torch.testing.assert_close(sin[0], torch.tensor([1.0] * 4 + [0.0] * 5))
    torch.testing.assert_close(sin[2, 0], torch.tensor(math.cos(7.5)))  # the first frequency is 1
    torch.manual_seed(0)
    four = FourierEmbedding(8, scale=16.0)
    assert "freqs" in four.state_dict() and not list(four.parameters())
    out = four(t)
    torch.testing.assert_close(out[:, :4] ** 2 + out[:, 4:] ** 2, torch.ones(3, 4))
    with pytest.raises(ValueError, match="unknown time embedding 'gauss'"):
        _mlp(time_embedding="gauss")


def test_bad_time_shape_raises():
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        _mlp()(torch.randn(B, 2), torch.rand(B + 1))


# ---------------------------------------------------------------- training and gradients


def test_mlp_learns_a_denoising_regression():
    """eps-prediction on a 4-point 2-D data set: 300 Adam steps cut the held-out loss by well over half."""
    torch.manual_seed(0)
    points = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    net = MLP(2, hidden=64, depth=2, emb_dim=32, time_scale=100.0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def loss(g: torch.Generator | None, n: int) -> torch.Tensor:
        x0 = points[torch.randint(0, 4, (n,), generator=g)]
        t = torch.rand(n, generator=g) * 0.98 + 0.01
        eps = torch.randn(n, 2, generator=g)
        a, s = torch.cos(0.5 * math.pi * t)[:, None], torch.sin(0.5 * math.pi * t)[:, None]
        return (net(a * x0 + s * eps, t) - eps).pow(2).mean()

    with torch.no_grad():
        before = loss(torch.Generator().manual_seed(1), 4096).item()
    for _ in range(300):
        opt.zero_grad()
        loss(None, 256).backward()
        opt.step()
    with torch.no_grad():
        after = loss(torch.Generator().manual_seed(1), 4096).item()
    assert before > 0.9
    assert after < 0.4 * before, (before, after)


@pytest.mark.parametrize("name", list(NETS))
def test_every_parameter_gets_a_gradient(name):
    net, x = _build(name, num_classes=3)
    net.train()
    out = net(x, torch.rand(B), torch.tensor([0, 1, 3]))
    (out * torch.randn(out.shape)).sum().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_unet_variants_get_gradients_everywhere():
    net = _randomize_zero_init(
        UNet(in_channels=2, image_size=7, channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(7, 4),
             resblock_updown=True, skip_rescale=True, scale_shift=True, time_embedding="fourier")
    )
    out = net(torch.randn(B, 2, 7, 7), torch.rand(B))
    (out * torch.randn(out.shape)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("name", list(NETS))
def test_bfloat16_autocast_is_finite(name):
    net, x = _build(name, num_classes=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, torch.rand(B) * 1000, torch.tensor([0, 1, 3]))
    assert out.shape[0] == B and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------- input checks and the registry


def test_wrong_input_shapes_raise():
    unet = _unet()
    with pytest.raises(ValueError, match=re.escape("UNet expected input of shape (B, 1, 8, 8), got (3, 3, 8, 8)")):
        unet(torch.randn(B, 3, 8, 8), torch.rand(B))
    with pytest.raises(ValueError, match=re.escape("got (3, 1, 16, 16)")):
        unet(torch.randn(B, 1, 16, 16), torch.rand(B))
    with pytest.raises(ValueError, match=re.escape("DiT expected input of shape (B, 1, 8, 8), got (3, 1, 8)")):
        _dit()(torch.randn(B, 1, 8), torch.rand(B))
    with pytest.raises(ValueError, match=re.escape("MLP expected input of shape (B, 2), got (3, 3)")):
        _mlp()(torch.randn(B, 3), torch.rand(B))
    seq = _seq()
    with pytest.raises(ValueError, match="1 <= L <= 12"):
        seq(torch.zeros(B, 13, dtype=torch.long), torch.rand(B))
    with pytest.raises(ValueError, match="integer token ids"):
        seq(torch.zeros(B, 4), torch.rand(B))
    with pytest.raises(ValueError, match=re.escape("token id 7 is out of range [0, 6]")):
        seq(torch.full((B, 4), 7), torch.rand(B))


def test_build_network():
    assert NETWORKS.names() == ["classifier", "dit", "latent_transformer", "mlp", "sequence_transformer", "unet"]
    net = build_network("unet", in_channels=1, image_size=8, channels=16, channel_mult=(1, 2))
    assert isinstance(net, UNet)
    assert isinstance(build_network("sequence_transformer", vocab_size=5, seq_len=4, hidden=16, depth=1), SequenceTransformer)
    with pytest.raises(ValueError, match="unknown network 'resnet'; valid networks: classifier, dit, latent_transformer, mlp, sequence_transformer, unet"):
        build_network("resnet")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) 'chanels' for network 'unet'; allowed: in_channels, .*channels"):
        build_network("unet", chanels=64)
    with pytest.raises(ValueError, match=r"network 'dit' needs argument\(s\) 'in_channels', 'image_size'"):
        build_network("dit", hidden=32)


def test_rotary_attention_scores_depend_only_on_the_offset() -> None:
    """rotate(q)_p . rotate(k)_r is a function of p - r (RoFormer): the same vectors shifted together score the same."""
    from udm.nets.transformer import rotate

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=g, dtype=torch.float64).unbind(0)
    seq_q = rotate(q.expand(1, 1, 12, 16).contiguous())[0, 0]
    seq_k = rotate(k.expand(1, 1, 12, 16).contiguous())[0, 0]
    scores = seq_q @ seq_k.T
    for offset in range(-5, 6):
        diag = torch.diagonal(scores, offset)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=1e-12, atol=1e-12)
    assert float(scores[0, 0]) == pytest.approx(float((q * k).sum()))
    assert abs(float(scores[0, 1] - scores[0, 0])) > 1e-3
    with pytest.raises(ValueError, match="positions must be 'rotary' or 'learned'"):
        SequenceTransformer(5, 4, hidden=16, depth=1, positions="sinusoidal")
