"""A GAN tuned through your own training loop: tuner calls ``fit(params, ctx)`` per trial.

Generator and discriminator are small MLPs over scikit-learn's 8x8 digits (pixels scaled to
[-1, 1]); the search decides their learning rates, Adam's betas, the latent size and the
width. A GAN has no validation accuracy, so each epoch it is scored the way image GANs are,
by the Inception score (Salimans et al., 2016), with a small digit classifier in place of
Inception: exp(E_x KL(p(y|x) || p(y))) over 1,000 generated digits, from 1 (junk, or one
digit only) to 10 (confident and all ten digits). The classifier is trained once per
process (it is the same for every trial) on the real digits.

For tuner, this loop does what any loop does: train on ``ctx.device`` with ``ctx.seed``,
checkpoint each epoch, ``ctx.report(epoch, score)`` (the pruner may stop it there), and
return the last score; every epoch's score is kept on the trial (``ctx.info``). The
study's metric is ``accuracy`` (higher is better): the score divided by 10, so it lies in
(0, 1]; the raw score is reported too, as ``inception``.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

SAMPLES = 1000  # generated digits scored per epoch


def digits(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits as (N, 64) in [-1, 1] and their labels, on ``device``."""
    x, y = load_digits(return_X_y=True)
    return (torch.tensor(x, dtype=torch.float32, device=device) / 8.0 - 1.0,
            torch.tensor(y, device=device))


@cache
def judge(device_name: str) -> nn.Module:
    """The digit classifier that scores generated digits: trained once per process."""
    device = torch.device(device_name)
    x, y = digits(device)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(len(y), (256,), generator=g).to(device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def inception_score(fake: torch.Tensor, classifier: nn.Module) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 (junk or one class) to 10 (sharp and all classes)."""
    p = F.softmax(classifier(fake), dim=1)
    marginal = p.mean(0, keepdim=True)
    kl = (p * (p.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
    return float(kl.mean().exp())


def make_models(params: dict) -> tuple[nn.Module, nn.Module]:
    latent, hidden = int(params["latent"]), int(params["hidden"])
    gen = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2),
                        nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                        nn.Linear(hidden, 64), nn.Tanh())
    disc = nn.Sequential(nn.Linear(64, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
    return gen, disc


def fit(params: dict, ctx) -> float:
    torch.manual_seed(ctx.seed)
    device = ctx.device
    real, _ = digits(device)
    classifier = judge(str(device))
    gen, disc = make_models(params)
    gen, disc = gen.to(device), disc.to(device)
    betas = (float(params["beta1"]), float(params["beta2"]))
    opt_g = torch.optim.Adam(gen.parameters(), lr=float(params["g_lr"]), betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(params["d_lr"]), betas=betas)
    latent, batch = int(params["latent"]), int(params["batch_size"])
    # a fixed noise batch: every epoch's score is measured on the same draws
    noise = torch.randn(SAMPLES, latent, generator=torch.Generator().manual_seed(ctx.seed))
    noise = noise.to(device)

    start, score, scores = 0, 0.0, []
    state = ctx.load_checkpoint()  # a retry of a killed trial goes on from its last epoch
    if state is not None:
        for module, key in ((gen, "gen"), (disc, "disc"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        torch.set_rng_state(state["rng"])
        start, score, scores = state["epoch"], state["score"], state["scores"]

    ones, zeros = torch.ones(batch, 1, device=device), torch.zeros(batch, 1, device=device)
    for epoch in range(start, ctx.max_epochs):
        gen.train()
        for idx in torch.randperm(len(real)).split(batch):
            x = real[idx.to(device)]
            n = len(x)
            z = torch.randn(n, latent, device=device)
            fake = gen(z)
            # discriminator: real -> 1, fake -> 0 (non-saturating GAN loss)
            d_loss = (F.binary_cross_entropy_with_logits(disc(x), ones[:n])
                      + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros[:n]))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            # generator: make the discriminator say 1
            g_loss = F.binary_cross_entropy_with_logits(disc(fake), ones[:n])
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
        gen.eval()
        with torch.no_grad():
            score = inception_score(gen(noise), classifier)
        scores.append(score)
        ctx.info["inception"] = scores  # kept on the trial (tuner trials, the dashboard)
        ctx.save_checkpoint({"gen": gen.state_dict(), "disc": disc.state_dict(),
                             "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                             "rng": torch.get_rng_state(), "epoch": epoch + 1, "score": score,
                             "scores": scores})
        ctx.report(epoch + 1, score / 10, inception=score, d_loss=d_loss.item(),
                   g_loss=g_loss.item())
    return score / 10
