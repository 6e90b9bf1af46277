"""Same-shape trials trained as one (tuner.training.fuse): a fused member follows the curve its own
``fit`` would, is pruned alone, checkpoints in fit's format (so plain ``fit`` resumes it),
and a real study with ``fuse: 4`` spends its exact trial budget."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from typer.testing import CliRunner

from tuner import api
from tuner.cli import app
from tuner.config import fuse_key, parse_spec
from tuner.data import DataBundle, load_builtin
from tuner.errors import SpecError, TunerError
from tuner.storage import normalize_url, train_losses
from tuner.training.context import CheckpointStore, Context, TrialPruned
from tuner.training.fuse import choose_k, fit_fused
from tuner.training.train import fit

pytest_plugins = ["servers"]

CPU = torch.device("cpu")
MEMBERS = [(0.05, 0.0, 0.9), (0.01, 1e-3, 0.5), (0.02, 1e-2, 0.0), (0.003, 1e-4, 0.7)]


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_builtin("digits", "unused", validation=0.2, seed=0)


class Curve:
    """A reporter that keeps the curve and prunes from ``prune_at`` on."""

    def __init__(self, prune_at: int | None = None):
        self.values: list[float] = []
        self.prune_at = prune_at

    def report(self, epoch: int, value: float, extras: Mapping[str, float]) -> bool:
        self.values.append(value)
        return self.prune_at is not None and epoch >= self.prune_at

    def stop_requested(self) -> bool:
        return False


def _params(optimizer: str, lr: float, wd: float, momentum: float, **kw: Any) -> dict[str, Any]:
    return {"optimizer": optimizer, "lr": lr if optimizer.startswith("sgd") else lr / 10,
            "weight_decay": wd, "momentum": momentum, "depth": 2, "width": 24,
            "batch_size": 64, "schedule": "cosine", **kw}


def _ctx(data: DataBundle, seed: int, epochs: int, **kw: Any) -> Context:
    return Context(device=CPU, seed=seed, max_epochs=epochs, data=data, **kw)


@pytest.mark.parametrize("optimizer", ["sgd", "sgd_momentum", "adam", "adamw"])
def test_fused_members_follow_their_own_fit(digits: DataBundle, optimizer: str) -> None:
    ps = [_params(optimizer, *m) for m in MEMBERS]
    alone = []
    for i, p in enumerate(ps):
        c = _ctx(digits, 10 + i, 4)
        value = fit(p, c)
        alone.append((value, c.history))
    ctxs = [_ctx(digits, 10 + i, 4) for i in range(len(ps))]
    results = fit_fused(ps, ctxs)
    for (value, history), result, c in zip(alone, results, ctxs, strict=True):
        assert result == pytest.approx(value, abs=1e-6)
        assert len(c.history) == len(history) == 4
        for mine, theirs in zip(c.history, history, strict=True):
            for key in ("value", "train_loss", "lr", "val_loss"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key
    # the members differ from each other: each trained with its own hyperparameters
    assert len({round(c.history[-1]["train_loss"], 6) for c in ctxs}) == len(ps)


def test_a_pruned_member_stops_and_the_others_go_on(digits: DataBundle) -> None:
    ps = [_params("sgd_momentum", *m) for m in MEMBERS[:3]]
    reporters = [Curve(), Curve(prune_at=2), Curve()]
    ctxs = [_ctx(digits, 20 + i, 5, reporter=r) for i, r in enumerate(reporters)]
    results = fit_fused(ps, ctxs)
    assert isinstance(results[1], TrialPruned)
    assert len(reporters[1].values) == 2 and ctxs[1].info["epochs_run"] == 2
    assert [len(r.values) for r in (reporters[0], reporters[2])] == [5, 5]
    # the survivors' curves are those of their own fit: the pruned member's leaving changed
    # nothing for them
    for j in (0, 2):
        c = _ctx(digits, 20 + j, 5)
        assert fit(ps[j], c) == pytest.approx(results[j], abs=1e-6)
        assert [h["value"] for h in c.history] == pytest.approx(reporters[j].values, abs=1e-6)


def test_dropout_members_train_and_differ(digits: DataBundle) -> None:
    ps = [_params("adam", 0.1, 0.0, 0.0, dropout=d) for d in (0.0, 0.3)]
    ctxs = [_ctx(digits, 5, 3) for _ in ps]  # one seed: only dropout tells them apart
    results = fit_fused(ps, ctxs)
    assert all(isinstance(r, float) and r > 0.5 for r in results)
    assert ctxs[0].history[-1]["train_loss"] != ctxs[1].history[-1]["train_loss"]
    assert fit(ps[0], _ctx(digits, 5, 3)) == pytest.approx(results[0], abs=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw"])
def test_a_member_checkpoint_resumes_alone_with_fit(digits: DataBundle, tmp_path: Path,
                                                    optimizer: str) -> None:
    """A fused group 'crashes' after epoch 2 (every member pruned there); one member's
    checkpoint is resumed by plain fit, which ends where the member's unfused fit ends."""
    ps = [_params(optimizer, *m) for m in MEMBERS[:3]]
    stores = [CheckpointStore(tmp_path / f"trial-{i}.pt") for i in range(3)]
    ctxs = [_ctx(digits, 30 + i, 5, reporter=Curve(prune_at=2), checkpoints=s)
            for i, s in enumerate(stores)]
    fit_fused(ps, ctxs)
    state = stores[1].load()
    assert state is not None and state["epoch"] == 2
    assert set(state) >= {"model", "optimizer", "scheduler", "generator", "torch_rng"}
    resumed = _ctx(digits, 31, 5, checkpoints=stores[1])
    value = fit(ps[1], resumed)
    reference = _ctx(digits, 31, 5)
    assert value == pytest.approx(fit(ps[1], reference), abs=1e-6)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert [h["value"] for h in resumed.history] == pytest.approx(
        [h["value"] for h in reference.history], abs=1e-6)


def test_choose_k_times_every_candidate(digits: DataBundle) -> None:
    k, rates = choose_k(_params("sgd", 0.05, 0.0, 0.0), _ctx(digits, 0, 1), candidates=(1, 2, 4),
                        steps=3)
    assert set(rates) == {1, 2, 4} and k in rates and all(r > 0 for r in rates.values())
    assert rates[k] == max(rates.values())


# ---- the study file -------------------------------------------------------------------
SPEC: dict[str, Any] = {
    "name": "fused_digits", "data": "digits", "model": "mlp", "epochs": 3, "trials": 6,
    "validation": 0.2, "seed": 1, "fuse": 4, "pruner": "none",
    "space": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
              "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
              "optimizer": "adamw", "depth": 1, "width": 32, "batch_size": 64},
}


def test_fuse_k_with_a_varying_shape_is_one_line_naming_the_parameter() -> None:
    raw = {**SPEC, "space": {**SPEC["space"], "width": {"type": "int", "low": 16, "high": 64}}}
    with pytest.raises(SpecError, match=r"fuse: 4 cannot stack these trials: space\.width "
                                         r"varies.*fix it \(e\.g\. width: 16\) or use fuse: auto"):
        parse_spec(raw)
    with pytest.raises(SpecError, match="mlp family only"):
        parse_spec({**SPEC, "model": "cnn", "data": "mnist"})
    with pytest.raises(SpecError, match="asha"):
        parse_spec({**SPEC, "pruner": {"name": "asha", "min_epochs": 1}})
    # auto fuses what repeats; off and a varying shape are fine
    assert parse_spec({**raw, "fuse": "auto"}).fuse == "auto"
    assert parse_spec({**raw, "fuse": False}).fuse == "off"
    assert parse_spec({k: v for k, v in SPEC.items() if k != "fuse"}).fuse == "off"


def test_fuse_key_groups_by_shape_only() -> None:
    a = {"lr": 0.1, "dropout": 0.2, "width": 8, "optimizer": "adam"}
    assert fuse_key(a) == fuse_key({**a, "lr": 0.3, "dropout": 0.0, "weight_decay": 1e-3})
    assert fuse_key(a) != fuse_key({**a, "width": 9})
    assert fuse_key({**a, "optimizer": "rmsprop"}) is None


def test_cli_fuse_k_on_a_varying_shape_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    import yaml

    raw = {**SPEC, "fuse": "off",
           "space": {**SPEC["space"], "depth": {"type": "int", "low": 1, "high": 2}}}
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(raw))
    db = tmp_path / "t.db"
    out = CliRunner().invoke(app, ["run", str(f), "--fuse", "4", "--storage", f"sqlite:///{db}",
                                   "--device", "cpu", "--quiet"])
    assert out.exit_code == 2, out.output
    assert "space.depth varies" in out.output and len(out.output.strip().splitlines()) == 1
    assert not db.exists() or "fused_digits" not in db.read_bytes().decode("latin-1")
    bad = CliRunner().invoke(app, ["run", str(f), "--fuse", "many", "--storage",
                                   f"sqlite:///{db}", "--quiet"])
    assert bad.exit_code == 2 and "--fuse many" in bad.output


def test_a_fused_study_spends_its_exact_budget_with_each_trials_own_curve(tmp_path: Path) -> None:
    store = {"storage": f"sqlite:///{tmp_path / 'f.db'}", "device": "cpu",
             "checkpoint_dir": str(tmp_path / "ckpt")}
    result = api.run(SPEC, **store)
    trials = result.study.trials
    assert len(trials) == 6 and result.counts == {"COMPLETE": 6}
    curves = [t.intermediate_values for t in trials]
    assert all(sorted(c) == [1, 2, 3] for c in curves)
    assert len({tuple(c.values()) for c in curves}) == 6  # each its own curve
    assert all(t.value == pytest.approx(t.intermediate_values[3]) for t in trials)
    # trained as one: four, then the two that the budget had left
    assert [t.user_attrs.get("fused") for t in trials] == [4, 4, 4, 4, 2, 2]
    assert all(t.user_attrs["epochs_run"] == 3 and len(train_losses(t)) == 3
               and t.user_attrs["tuner_state"] == "fused" for t in trials)
    # a member trained as its own fit would have (same seed: spec.seed + lineage)
    t = trials[2]
    c = Context(device=CPU, seed=SPEC["seed"] + t.number, max_epochs=3,
                data=load_builtin("digits", "unused", validation=0.2, seed=SPEC["seed"]))
    assert fit(t.params | {k: v for k, v in SPEC["space"].items() if not isinstance(v, dict)},
               c) == pytest.approx(t.value, abs=1e-6)
    assert not list((tmp_path / "ckpt").rglob("*.pt"))  # completed: cleaned up


def test_a_worker_with_fuse_auto_runs_trials_of_a_varying_shape(tmp_path: Path) -> None:
    raw = {**SPEC, "name": "auto_digits", "fuse": "auto", "trials": 5, "epochs": 2,
           "space": {**SPEC["space"], "width": [16, 32]}}
    result = api.run(raw, storage=f"sqlite:///{tmp_path / 'a.db'}", device="cpu",
                     checkpoint_dir=str(tmp_path / "ckpt"))
    assert len(result.study.trials) == 5 and result.counts == {"COMPLETE": 5}
    assert all(sorted(t.intermediate_values) == [1, 2] for t in result.study.trials)


def test_settings_refuse_a_bad_fuse() -> None:
    with pytest.raises(TunerError, match="--fuse 0"):
        api.settings(fuse="0")
    assert api.settings(fuse="8").fuse_mode("off") == 8
    assert api.settings().fuse_mode("auto") == "auto"


def test_stop_is_shared_by_every_member(digits: DataBundle) -> None:
    stop = threading.Event()

    class Stopping(Curve):
        def stop_requested(self) -> bool:
            stop.set()
            return True

    ctxs = [_ctx(digits, i, 3, reporter=Stopping()) for i in range(2)]
    results = fit_fused([_params("sgd", 0.05, 0.0, 0.0)] * 2, ctxs)
    assert all(type(r).__name__ == "StopRequested" for r in results)
    assert all(len(c.history) == 1 for c in ctxs)


def test_identical_members_of_one_group_do_not_wait_for_each_other(tmp_path: Path) -> None:
    """dedup waits for a running twin; a twin in the same fused group trains alongside."""
    raw = {**SPEC, "name": "twins", "trials": 4, "epochs": 1, "sampler": "random",
           "space": {**SPEC["space"], "lr": [0.01], "weight_decay": [1e-4]}}
    result = api.run(raw, storage=f"sqlite:///{tmp_path / 't.db'}", device="cpu",
                     checkpoint_dir=str(tmp_path / "ckpt"))
    assert result.counts == {"COMPLETE": 4}
    values = {t.value for t in result.study.trials}
    assert len(values) == 4  # same params, own seeds: four different trainings


def test_the_fusion_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("bench_fusion", folder / "fusion.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--workloads", "digits", "--k", "1", "4", "--seeds", "1", "--trials", "4",
                "--no-loop-only"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| digits")]
    assert len(rows) == 2 and "1-min load average" in out
    assert [r.split("|")[3].strip() for r in rows] == ["4", "4"]  # every trial finished


@pytest.mark.slow
def test_two_worker_processes_with_fuse_spend_the_exact_budget(postgres_url: str,
                                                               tmp_path: Path) -> None:
    """Two local worker processes on PostgreSQL, each taking up to 4 trials at a time in its
    own budget slots: the study ends with exactly its 7 trials, each with its own curve."""
    raw = {**SPEC, "name": "fused_pg", "trials": 7, "epochs": 2}
    result = api.run(raw, workers=2, storage=postgres_url, device="cpu",
                     checkpoint_dir=str(tmp_path / "ckpt"))
    trials = result.study.trials
    assert len(trials) == 7 and result.counts == {"COMPLETE": 7}
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
    assert len({tuple(t.intermediate_values.values()) for t in trials}) == 7
    assert any(t.user_attrs.get("fused", 1) > 1 for t in trials)


def test_a_stopped_fused_group_is_resumed_member_by_member_with_fit(tmp_path: Path) -> None:
    """SIGINT in the middle of a fused group: every member checkpoints and is queued as a
    retry; the next run resumes each one alone (plain fit, from its checkpoint), and every
    trial's curve ends whole."""
    import os
    import signal

    store = {"storage": f"sqlite:///{tmp_path / 's.db'}", "device": "cpu",
             "checkpoint_dir": str(tmp_path / "ckpt")}
    raw = {**SPEC, "name": "stopped", "trials": 4, "epochs": 3}
    sent: list[int] = []

    def on_event(e: Any) -> None:
        if e.kind == "epoch" and e.epoch == 1 and not sent:
            sent.append(e.trial)
            os.kill(os.getpid(), signal.SIGINT)  # the worker's first Ctrl-C: finish the epoch

    first = api.run(raw, on_event=on_event, **store)
    assert first.stopped_because == "stopped"
    stopped = [t for t in first.study.trials if t.state.name == "FAIL"]
    assert len(stopped) == 4 and all(sorted(t.intermediate_values) == [1] for t in stopped)
    assert len(list((tmp_path / "ckpt").rglob("trial-*.pt"))) == 4  # one per member
    again = api.resume("stopped", **store)
    done = [t for t in again.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in done)  # curves whole
    assert all("fused" not in t.user_attrs for t in done)  # retries ran alone
    # resumed alone, each ends where its own unfused fit ends
    data = load_builtin("digits", "unused", validation=0.2, seed=SPEC["seed"])
    fixed = {k: v for k, v in SPEC["space"].items() if not isinstance(v, dict)}
    t = done[0]
    lineage = t.user_attrs["lineage"]
    c = Context(device=CPU, seed=SPEC["seed"] + lineage, max_epochs=3, data=data)
    assert fit(t.params | fixed, c) == pytest.approx(t.value, abs=1e-6)


# ---- the fused group's database work: one write per epoch, not one per member ----------
def _statements(into: str) -> tuple[list[int], Any]:
    """Count the statements that write into table ``into`` (an executemany counts once)."""
    import sqlalchemy as sa

    seen: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:
        if statement.lstrip().upper().startswith(f"INSERT INTO {into.upper()}"):
            seen.append(len(params) if executemany else 1)

    sa.event.listen(sa.Engine, "after_cursor_execute", count)
    return seen, lambda: sa.event.remove(sa.Engine, "after_cursor_execute", count)


def test_a_fused_epoch_writes_every_members_report_in_one_statement(tmp_path: Path) -> None:
    """Six trials, fused four then two, three epochs: six writes of intermediate values (one
    per group and epoch), carrying the eighteen reports, each landing on its own trial; the
    members' attrs are written once per group at the start and once at the end."""
    seen, stop = _statements("trial_intermediate_values")
    attrs, stop_attrs = _statements("trial_user_attributes")
    try:
        result = api.run({**SPEC, "name": "one_write"}, storage=f"sqlite:///{tmp_path / 'w.db'}",
                         device="cpu", checkpoint_dir=str(tmp_path / "ckpt"))
    finally:
        stop()
        stop_attrs()
    trials = result.study.trials
    assert [t.user_attrs.get("fused") for t in trials] == [4, 4, 4, 4, 2, 2]
    assert seen == [4, 4, 4, 2, 2, 2]
    # each group's start attrs (lineage, worker) and closing attrs in one statement each
    assert len(attrs) == 4
    for t in trials:  # each member's own curve, as its own reports said
        assert sorted(t.intermediate_values) == [1, 2, 3]
    assert len({tuple(t.intermediate_values.values()) for t in trials}) == 6


def _driver_url(url: str) -> str:
    """``url`` with the driver tuner uses (PyMySQL for mysql://), for Optuna's own studies."""
    return normalize_url(url).render_as_string(hide_password=False)


class _WorstAtStep2(optuna.pruners.BasePruner):
    """Prunes, at step 2, the running trial whose value is the lowest there; counts the
    study reads it costs."""

    def __init__(self) -> None:
        self.calls = 0

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.calls += 1
        if trial.last_step != 2:
            return False
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        at2 = {t.number: t.intermediate_values[2] for t in running if 2 in t.intermediate_values}
        return trial.number == min(at2, key=at2.__getitem__)


def _group(study: optuna.Study, k: int, patience: Any = None) -> list[Any]:
    """K running trials of ``study`` with the reporters a fused group's members get."""
    from tuner import storage
    from tuner.trials.fused import GroupReports
    from tuner.trials.reporter import TrialReporter

    patience = patience or storage.Patience(5, 0)
    together = GroupReports(patience)
    reporters = []
    for _ in range(k):
        r = TrialReporter(study.ask(), threading.Event(), None, patience=patience)
        r.together = together
        reporters.append(r)
    return reporters


def test_a_member_pruned_by_the_one_read_check_stops_while_the_others_finish(
        digits: DataBundle, any_url: str) -> None:
    """Every member is judged by the study's pruner after each epoch, against one read of
    the study per epoch (not one per member); the member it prunes stops at epoch 2 and
    leaves the stack, the others train their 4 epochs, each curve in its own trial."""
    pruner = _WorstAtStep2()
    study = optuna.create_study(storage=_driver_url(any_url), direction="maximize", pruner=pruner)
    reporters = _group(study, 3)
    backend = study._storage
    reads: list[int] = []
    real = backend.get_all_trials
    backend.get_all_trials = lambda *a, **kw: reads.append(1) or real(*a, **kw)
    ps = [_params("sgd_momentum", *m) for m in MEMBERS[:3]]
    ctxs = [_ctx(digits, 40 + i, 4, reporter=r) for i, r in enumerate(reporters)]
    results = fit_fused(ps, ctxs)
    pruned = [i for i, r in enumerate(results) if isinstance(r, TrialPruned)]
    assert len(pruned) == 1
    assert pruner.calls == 3 + 3 + 2 + 2  # every member, every epoch it reported
    assert len(reads) == 1  # only at step 2 did the pruner look at the study: once
    stored = {t.number: t.intermediate_values for t in study.get_trials()}
    for i, r in enumerate(reporters):
        curve = stored[r.trial.number]
        assert sorted(curve) == ([1, 2] if i in pruned else [1, 2, 3, 4])
        assert list(curve.values()) == pytest.approx([h["value"] for h in ctxs[i].history])
    # the one pruned had the lowest accuracy at epoch 2
    at2 = {i: c.history[1]["value"] for i, c in enumerate(ctxs)}
    assert pruned == [min(at2, key=at2.__getitem__)]


def test_a_fused_report_through_an_outage_is_held_then_written_in_order(
        digits: DataBundle, any_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As one trial's reports: while the database is unreachable (epoch 2) the group's
    reports are held, training goes on and no member is pruned (the pruner would prune
    every member at step 2); the next epoch writes the held ones first, so each member's
    curve ends whole."""
    import sqlalchemy as sa

    from tuner import storage

    class PruneAt2(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return trial.last_step == 2

    study = optuna.create_study(storage=_driver_url(any_url), pruner=PruneAt2())
    reporters = _group(study, 2)
    real, calls = storage.report_many, []

    def flaky(reports: Any) -> list[bool]:
        calls.append([list(steps) for _, steps in reports])
        if len(calls) == 2:
            raise sa.exc.OperationalError("INSERT", {}, ConnectionError("server closed"))
        return real(reports)

    monkeypatch.setattr(storage, "report_many", flaky)
    ps = [_params("adam", *m) for m in MEMBERS[:2]]
    ctxs = [_ctx(digits, 50 + i, 3, reporter=r) for i, r in enumerate(reporters)]
    results = fit_fused(ps, ctxs)
    assert all(isinstance(r, float) for r in results)  # not pruned: step 2 was never judged
    assert [[s for s, _ in steps] for steps in calls[2]] == [[2, 3], [2, 3]]  # held, in order
    for r, c in zip(reporters, ctxs, strict=True):
        curve = storage.refreshed(r.trial).intermediate_values
        assert sorted(curve) == [1, 2, 3] and not r.held
        assert list(curve.values()) == pytest.approx([h["value"] for h in c.history])


def test_a_group_starts_its_trials_in_one_go_within_the_budget(any_url: str) -> None:
    """start_trials takes up to n slots with their trials and first heartbeats; the budget
    (6) is spent exactly: 4, then the 2 left, then none."""
    from tuner import storage

    opened = storage.connect(any_url)
    study = optuna.create_study(storage=opened, study_name="starts")
    budget = storage.Budget(opened.engine, "starts")
    budget.add(6, None)
    seen, stop = _statements("trials")
    try:
        sizes = [len(storage.start_trials(study, budget, 4)) for _ in range(3)]
    finally:
        stop()
    assert sizes == [4, 2, 0] and budget.state().remaining == 0
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert [t.number for t in running] == list(range(6))
    assert sorted(storage.heartbeat_ages(study)) == list(range(6))  # each has its first beat
    assert sum(seen) == 6



def test_a_fused_groups_repeats_are_found_from_one_read_of_the_study(tmp_path: Path) -> None:
    """The second group draws the first group's configuration again: each member sees,
    in the one read its group makes after drawing, that a finished trial had its params,
    and reuses that result instead of training; every member has its start attrs."""
    raw = {**SPEC, "name": "repeats", "trials": 8, "epochs": 1, "sampler": "random",
           "space": {**SPEC["space"], "lr": [0.01], "weight_decay": [1e-4]}}
    result = api.run(raw, storage=f"sqlite:///{tmp_path / 'r.db'}", device="cpu",
                     checkpoint_dir=str(tmp_path / "ckpt"))
    trials = result.study.trials
    # a one-point space: the first group trains it (4 members), the second group's members
    # are genuine repeats, which the views count as REPEAT (tuner.results.status.trial_state)
    assert result.counts == {"COMPLETE": 4, "REPEAT": 4}
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    first, second = trials[:4], trials[4:]
    assert all("repeat_of" not in t.user_attrs and t.user_attrs["fused"] == 4 for t in first)
    assert all(t.user_attrs["repeat_of"] in {0, 1, 2, 3} and "fused" not in t.user_attrs
               for t in second)
    assert {t.value for t in second} <= {t.value for t in first}
    assert all(t.user_attrs["lineage"] == t.number and t.user_attrs["worker"]["pid"]
               for t in trials)


def test_a_group_is_told_together_and_a_member_finished_elsewhere_is_left_alone(
        any_url: str) -> None:
    """tell_many: each member gets its own state and value in one transaction; a member
    another worker failed meanwhile (the reaper) stays as that worker left it, and says so."""
    from optuna.trial import TrialState

    from tuner import storage

    study = optuna.create_study(storage=_driver_url(any_url), direction="maximize")
    trials = [study.ask() for _ in range(4)]
    study._storage.set_trial_state_values(trials[2]._trial_id, TrialState.FAIL)  # reaped
    told = storage.tell_many(study, [(trials[0], None, 0.5), (trials[1], TrialState.PRUNED, None),
                                     (trials[2], None, 0.9), (trials[3], None, [0.7])])
    assert told == [True, True, False, True]
    got = {t.number: (t.state, t.value) for t in study.get_trials()}
    assert got == {0: (TrialState.COMPLETE, 0.5), 1: (TrialState.PRUNED, None),
                   2: (TrialState.FAIL, None), 3: (TrialState.COMPLETE, 0.7)}
    assert study.best_trial.number == 3
    assert all(t.datetime_complete is not None for t in study.get_trials())


def test_a_packed_checkpoint_loads_as_it_was_saved(digits: DataBundle, tmp_path: Path) -> None:
    """A fused member's checkpoint keeps its float32 tensors in one flat tensor (one record
    for torch.save instead of one per tensor); CheckpointStore.load gives back the state fit
    saves, key for key and bit for bit, so fit, a retry or a user's loop reads it as ever."""
    import io
    import zipfile

    from tuner.training import checkpoints, train

    p = _params("adamw", *MEMBERS[1])
    run = train._setup(p, _ctx(digits, 3, 2), digits)
    train.train_epoch(run, digits)
    state = {**checkpoints.state(run, 1), "report": {"epoch": 1, "value": 0.5}, "_history": []}
    store = CheckpointStore(tmp_path / "trial-0.pt")
    store.save(state, packed=True)
    back = store.load()
    assert back is not None and set(back) == set(state)

    def same(a: Any, b: Any) -> None:
        if isinstance(a, torch.Tensor):
            assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        elif isinstance(a, dict):
            assert type(a) is type(b) and list(a) == list(b)
            for k in a:
                same(a[k], b[k])
        elif isinstance(a, list | tuple):
            assert type(a) is type(b) and len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                same(x, y)
        else:
            assert a == b

    same(state, back)
    assert back["model"]._metadata == state["model"]._metadata  # module versions kept
    # the weights, biases, moments and steps are one record in the file, not one each
    records = [n for n in zipfile.ZipFile(io.BytesIO(store.path.read_bytes())).namelist()
               if "/data/" in n]
    plain = CheckpointStore(tmp_path / "plain.pt")
    plain.save(state)
    unpacked = [n for n in zipfile.ZipFile(plain.path).namelist() if "/data/" in n]
    assert len(records) == 3 and len(unpacked) > 20  # flat, generator, torch RNG
    fit_after = fit(p, _ctx(digits, 3, 2, checkpoints=store))  # resumes from it
    assert fit_after == pytest.approx(fit(p, _ctx(digits, 3, 2)), abs=1e-6)


def test_a_trial_built_from_its_read_is_the_trial_optuna_builds(tmp_path: Path) -> None:
    """start_trials builds each new optuna.Trial from the one read of the group instead of
    reading it again; it must hold what Optuna's own Trial(study, id) holds (if Optuna's
    Trial.__init__ changes, this names tuner/storage/_rdb.py:_trial_of to change)."""
    from tuner import storage
    from tuner.storage._group import _cache_many

    opened = storage.connect(f"sqlite:///{tmp_path / 'c.db'}")
    study = optuna.create_study(storage=opened, study_name="built")
    budget = storage.Budget(opened.engine, "built")
    budget.add(3, None)
    trials = storage.start_trials(study, budget, 3)
    for mine in trials:
        theirs = optuna.Trial(study, mine._trial_id)
        assert set(vars(mine)) == set(vars(theirs))
        assert mine._cached_frozen_trial == theirs._cached_frozen_trial
        assert mine._fixed_params == theirs._fixed_params
    # each trial's own copy: a suggestion on one reaches neither the others nor the cache
    trials[0].suggest_float("lr", 1e-3, 1e-1, log=True)
    assert "lr" not in trials[1].params
    again = _cache_many(study, [trials[0]._trial_id])[0]
    assert again.params == trials[0].params  # read from the database, where it was written
