"""PB2: population-based bandits (Parker-Holder et al., "Provably Efficient Online
Hyperparameter Optimization with Population-Based Bandits", NeurIPS 2020).

PBT whose explore step is a time-varying GP bandit instead of random x0.8/x1.2: each
segment that paused so far is one observation (the time, its hyperparameters scaled to
[0, 1] (log scale for log ranges), and how much its value improved over the segment, from
the weights it started from); a Gaussian process over (time, hyperparameters) predicts that
improvement now, and a bottom member takes the donor's weights with the hyperparameters of
highest upper confidence bound (GP-UCB). The members exploited in one generation are chosen
one after another, each chosen point added as if it had been observed with the worst gain
seen (a constant liar), so they spread out. The first generation, with no improvement observed
yet, explores as PBT does. Everything else (the population, generations, snapshots, the
ledger, what ``tuner retrain`` replays) is PBT's (:mod:`tuner.schedules.pbt`).

The GP is scikit-learn's ``GaussianProcessRegressor`` (a constant times an anisotropic RBF
kernel, plus white noise); the candidates are drawn from the generation's seeded generator,
so a decider that dies is replaced by one that decides the same.

    scheduler: {name: pb2, population: 8, interval: 2, perturb: [lr, weight_decay]}
"""

from __future__ import annotations

import math
import random
import warnings
from typing import TYPE_CHECKING, Any

from tuner.schedules import register
from tuner.schedules._base import PAUSED_ATTR, PBT_ATTR, View
from tuner.schedules.pbt import PBT, clip

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

CANDIDATES = 512  # points the UCB is maximised over
DELTA = 0.1  # GP-UCB's confidence: beta_t = 2 log(d t^2 pi^2 / (6 delta))


def _unit(value: float, d: Any) -> float:
    """``value`` of the distribution ``d`` scaled to [0, 1] (log scale for log ranges)."""
    lo, hi, v = (math.log(d.low), math.log(d.high), math.log(value)) if d.log else (
        d.low, d.high, value)
    return 0.0 if hi == lo else (v - lo) / (hi - lo)


def _from_unit(u: float, d: Any) -> float:
    if d.log:
        return math.exp(math.log(d.low) + u * (math.log(d.high) - math.log(d.low)))
    return d.low + u * (d.high - d.low)


class PB2(PBT):
    name = "pb2"
    summary = "PBT whose explore step is a time-varying GP bandit (population-based bandits)"

    def _observations(self, view: View, names: list[str], dists: dict[str, Any], g: int
                      ) -> tuple[list[list[float]], list[float]]:
        """(time, unit hyperparameters) -> improvement over the segment (larger is better),
        for each segment that paused at a generation up to ``g`` after the first."""
        sign = 1.0 if self.maximize else -1.0
        by_number = {t.number: t for t in view.trials}
        xs, ys = [], []
        for t in view.trials:
            e = t.user_attrs.get(PAUSED_ATTR)
            if e is None or int(e) > g or int(e) not in t.intermediate_values:
                continue
            e = int(e)
            start = e - self.spec.scheduler.interval
            rec = t.user_attrs.get(PBT_ATTR) or {}
            donor = by_number.get(rec.get("donor_trial")) if rec.get("donor") is not None \
                else None
            curve = (donor or t).intermediate_values  # the weights it started from
            if start not in curve or any(n not in t.params for n in names):
                continue
            xs.append([e / self.spec.epochs, *(_unit(t.params[n], dists[n]) for n in names)])
            ys.append(sign * (t.intermediate_values[e] - curve[start]))
        return xs, ys

    def explore(self, donor: FrozenTrial, view: View, g: int, rng: random.Random,
                chosen: list[dict[str, Any]]) -> tuple[dict[str, Any], dict]:
        names = [n for n in self.perturb() if n in donor.params
                 and type(donor.distributions.get(n)).__name__ in ("FloatDistribution",
                                                                     "IntDistribution")]
        dists = donor.distributions
        xs, ys = self._observations(view, names, dists, g)
        if len(ys) < 2 or not names:
            return super().explore(donor, view, g, rng, chosen)
        now = g / self.spec.epochs
        pending = [[now, *(_unit(p[n], dists[n]) for n in names)] for p in chosen]
        x = self._ucb(xs, ys, pending, now, len(names), rng)
        out, changes = dict(donor.params), {}
        for n, u in zip(names, x, strict=True):
            old, new = donor.params[n], clip(_from_unit(u, dists[n]), dists[n])
            out[n] = new
            if new != old:
                changes[n] = [old, new]
        return out, changes

    def _ucb(self, xs: list[list[float]], ys: list[float], pending: list[list[float]],
             now: float, dim: int, rng: random.Random) -> list[float]:
        """The unit hyperparameters of highest upper confidence bound at time ``now``."""
        import numpy as np
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        y = np.asarray(ys, dtype=float)
        y = (y - y.mean()) / (y.std() or 1.0)
        kernel = ConstantKernel(1.0) * RBF(length_scale=[0.5] * (dim + 1),
                                           length_scale_bounds=(1e-2, 1e2)) + WhiteKernel(0.1)

        x = np.asarray(xs, dtype=float)
        if pending:  # constant liar: the points chosen this generation, at the worst gain
            x = np.vstack([x, np.asarray(pending, dtype=float)])
            y = np.concatenate([y, np.full(len(pending), y.min())])
        with warnings.catch_warnings():  # a length scale at its bound is no news to a user
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp = GaussianProcessRegressor(kernel=kernel, random_state=0).fit(x, y)
        cands = np.asarray([[now, *(rng.random() for _ in range(dim))]
                            for _ in range(CANDIDATES)])
        mu, sd = gp.predict(cands, return_std=True)
        t = len(ys) + len(pending)
        beta = 2 * math.log(dim * t * t * math.pi ** 2 / (6 * DELTA))
        best = int(np.argmax(mu + math.sqrt(max(beta, 0.0)) * sd))
        return [float(v) for v in cands[best, 1:]]


register(PB2)
