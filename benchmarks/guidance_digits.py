"""Guidance on class-conditional 8x8 digits (THEORY §2): accuracy and diversity versus the guidance scale (CPU).

Trains the bundled ``digits_cond`` config (a UNet with a class embedding, labels
dropped to the null class with p = 0.1), then samples 50 images per class at a
fixed number of sampler steps for

* classifier-free guidance (G4) with weight w: x0 = x0_u + (1 + w)(x0_c - x0_u);
* classifier guidance (G2) with scale gamma, steering the null-label
  (unconditional) model, with two classifiers:
  - noise-aware (G1): the bundled ``digits_classifier`` config (the UNet encoder
    with a pooled head, cross-entropy on x_t of the same process), trained with the
    same Trainer as ``udm train``;
  - clean-data substitute (§2.1): a small torch MLP trained on clean digits,
    applied to x0_hat(x_t).

Scores come from an *independent* classifier (scikit-learn MLP on the training
digits; its test accuracy is printed): the share of samples it labels as the
requested class, and diversity as the mean distance of a class's samples to their
class mean (pixels), relative to the same spread of real test digits.

Run: ``python benchmarks/guidance_digits.py`` (about 12 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import udm
from udm.cli import CONFIG_DIR
from udm.config import load_config
from udm.guidance import ClassifierFreeGuidance, ClassifierGuidance
from udm.training import Trainer, load_trained
from udm.viz import save_image_grid

PER_CLASS = 50


def clean_classifier(x: torch.Tensor, y: torch.Tensor, steps: int = 1500, seed: int = 0) -> nn.Module:
    """The guidance classifier p_o(y | x0): a small MLP on clean training digits (not the scoring classifier)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 128), nn.SiLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def spread(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean distance of a class's images to their class mean (pixel space)."""
    values = [(x[labels == k] - x[labels == k].mean(0)).flatten(1).norm(dim=1).mean() for k in range(10) if (labels == k).sum() > 1]
    return float(torch.stack(values).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="training steps")
    ap.add_argument("--sampler-steps", type=int, default=25)
    ap.add_argument("--out", default="benchmarks/out/guidance_digits")
    args = ap.parse_args()
    out = Path(args.out)
    trainer = Trainer(load_config(CONFIG_DIR / "digits_cond.yaml", {"train.steps": args.steps, "train.log_every": 500}), out / "run",
                      resume=(out / "run" / "checkpoints" / "latest").exists(), progress=False, reuse_complete=True)
    trainer.train()
    den = trainer.sampling_denoiser()
    train, test = trainer.exp.train_data, trainer.exp.test_data
    clf_config = load_config(CONFIG_DIR / "digits_classifier.yaml", {"train.steps": args.steps, "train.log_every": 500})
    assert clf_config["process"] == trainer.config["process"], "the noise-aware classifier must read the model's process"
    Trainer(clf_config, out / "classifier", resume=(out / "classifier" / "checkpoints" / "latest").exists(), progress=False,
            reuse_complete=True).train()
    noisy, _ = load_trained(str(out / "classifier"))
    levels = ", ".join(f"t={t:g}: {noisy.accuracy(test.x, test.y, t):.3f}" for t in (0.0, 0.25, 0.5, 0.75, 1.0))
    print(f"noise-aware guidance classifier: test accuracy at {levels}")

    from sklearn.neural_network import MLPClassifier

    scorer = MLPClassifier(hidden_layer_sizes=(256,), max_iter=500, random_state=1).fit(train.x.flatten(1).numpy(), train.y.numpy())
    print(f"scoring classifier: test accuracy {scorer.score(test.x.flatten(1).numpy(), test.y.numpy()):.3f}")
    guide = clean_classifier(train.x, train.y)
    with torch.no_grad():
        guide_acc = float((guide(test.x).argmax(1) == test.y).double().mean())
    print(f"guidance classifier (clean digits): test accuracy {guide_acc:.3f}")
    real_spread = spread(test.x, test.y)

    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    x_T = trainer.process.prior((len(labels), *train.shape), udm.rng.generators_from_seeds(range(len(labels))))
    rows = []
    methods = [("cfg", w, ClassifierFreeGuidance(den, w)) for w in (0.0, 0.5, 1.0, 2.0, 4.0)]
    methods += [("classifier (noise-aware)", g, ClassifierGuidance(den, noisy, g)) for g in (1.0, 2.0, 4.0, 8.0)]
    methods += [("classifier (clean x0_hat)", g, ClassifierGuidance(den, lambda x0: guide(x0.float()), g, clean=True)) for g in (0.0, 1.0, 4.0, 16.0)]
    for name, scale, model in methods:
        start = time.perf_counter()
        with torch.no_grad():
            x, info = udm.sample(model, "dpmpp_2m", args.sampler_steps, x_T=x_T, cond=labels, return_info=True)
        wall = time.perf_counter() - start
        x = x.clamp(-1, 1)
        predicted = torch.as_tensor(scorer.predict(x.flatten(1).double().numpy()))
        accuracy = float((predicted == labels).double().mean())
        rows.append((name, scale, accuracy, spread(x, labels) / real_spread, info["nfe"], wall))
        grid = torch.cat([x[labels == k][:10] for k in range(10)])
        tag = name.split()[0] + ("_noisy" if "noise-aware" in name else "")
        save_image_grid(grid, out / f"{tag}_{scale:g}.png", nrow=10, scale=4)
    print(f"\n{PER_CLASS} samples per class, dpmpp_2m with {args.sampler_steps} steps; NFE = denoiser calls "
          "(CFG evaluates a doubled batch; classifier guidance adds a backward pass)\n")
    print("| guidance | scale | accuracy (independent classifier) | class spread / real | NFE | sample s |")
    print("|---|---|---|---|---|---|")
    for name, scale, accuracy, rel, nfe, wall in rows:
        print(f"| {name} | {scale:g} | {accuracy:.3f} | {rel:.2f} | {nfe} | {wall:.1f} |")


if __name__ == "__main__":
    main()
