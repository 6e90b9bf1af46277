"""Population-based training (tuner.schedules.pbt): members pause every interval epochs, the
bottom quantile take a top member's weights, optimizer state and perturbed params, lineage
and schedule are recorded, retrain replays the schedule. Real training on sklearn digits,
real SQLite, real worker processes."""

from __future__ import annotations

import json
import random
import textwrap
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from tuner_procs import assert_refused, kill, start_worker, trials, wait_for, worker_pid
from typer.testing import CliRunner

from tuner import api
from tuner.cli import app
from tuner.config import parse_spec
from tuner.schedules.pbt import explore, generations, schedule
from tuner.storage import PAUSED_ATTR, PBT_ATTR, PROMOTION_OF_ATTR, Budget, connect, engine_of, lineage
from tuner.study import Handle

pytest_plugins = ["servers"]
runner = CliRunner()

SPACE = """\
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  weight_decay: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}
  dropout: {type: float, low: 0.0, high: 0.5}
  width: 32
  batch_size: 64
  optimizer: adam
"""


def pbt_yaml(tmp: Path, *, population: int = 4, epochs: int = 4, interval: int = 1,
             extra: str = "", space: str = SPACE, name: str = "pbt") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        data: digits
        model: mlp
        metric: accuracy
        epochs: {epochs}
        validation: 0.2
        sampler: random
        scheduler: {{name: pbt, population: {population}, interval: {interval}, quantile: 0.25}}
        """) + extra + "space:\n" + space)
    return path


def test_generations_every_interval_below_epochs() -> None:
    assert generations(2, 8) == [2, 4, 6]
    assert generations(1, 3) == [1, 2]
    assert generations(3, 7) == [3, 6]


def test_explore_scales_or_resamples_within_bounds() -> None:
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "dropout": FloatDistribution(0.0, 0.5),
             "width": IntDistribution(8, 64), "step": FloatDistribution(0.0, 1.0, step=0.25)}
    params = {"lr": 1e-2, "dropout": 0.45, "width": 32, "step": 0.5}
    rng = random.Random(0)
    factors = set()
    for _ in range(200):
        new, changes = explore(params, dists, ["lr", "dropout", "step"], 0.0, rng)
        assert new["width"] == 32  # not named: untouched
        factors.add(round(new["lr"] / params["lr"], 6))
        assert new["dropout"] in (pytest.approx(0.36), 0.5)  # 0.45 x 1.2 clips to the bound
        assert new["step"] in (0.5,)  # 0.4 and 0.6 round back to the 0.25 grid
        assert set(changes) <= {"lr", "dropout"}
    assert factors == {0.8, 1.2}
    for _ in range(200):  # always resampled: anywhere in the distribution, never outside it
        new, _ = explore(params, dists, list(dists), 1.0, rng)
        for k, d in dists.items():
            assert d.low <= new[k] <= d.high
        assert isinstance(new["width"], int)


# generations at epochs 1 and 2; k = 1 of 4; lr only, scaled (never resampled)
_PBT = parse_spec({"name": "s", "data": "digits", "epochs": 3, "metric": "accuracy",
                   "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
                   "scheduler": {"name": "pbt", "population": 4, "interval": 1, "quantile": 0.25,
                                 "perturb": ["lr"], "resample_probability": 0.0}})


def advance(study: optuna.Study) -> bool:
    """What a worker does when it asks for work: record the schedule's first decision."""
    return Handle(study, _PBT, Budget(engine_of(study), study.study_name)).promote()


@pytest.mark.parametrize("any_url", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_racing_workers_decide_a_generation_once(any_url: str) -> None:
    """Four workers at once: one decides the generation (one exploit with k = 1), each member
    is continued exactly once, and a late member goes on with its own weights."""
    study = optuna.create_study(study_name="s", storage=connect(any_url), direction="maximize")
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for x in (0.5, 0.9, 0.1, 0.7):  # member 2 (0.1) is the bottom, member 1 (0.9) the top
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params={"lr": 1e-2}, distributions=dists,
            user_attrs={PAUSED_ATTR: 1}, intermediate_values={1: x}, value=x))
    budget = Budget(connect(any_url).engine, "s")
    budget.initialize(4, None, None)
    for _ in range(4):
        assert budget.acquire()
    won: list[bool] = []

    def worker() -> None:  # each its own connection, as separate processes would have
        url_storage = connect(any_url)
        s = optuna.load_study(study_name="s", storage=url_storage)
        won.append(advance(s))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, False, False, True]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(lineage(t) for t in waiting) == [0, 1, 2, 3]
    recs = {lineage(t): t.user_attrs[PBT_ATTR] for t in waiting}
    assert recs[2]["donor"] == 1 and recs[2]["changes"]["lr"][0] == 1e-2
    assert [recs[n]["donor"] for n in (0, 1, 3)] == [None, None, None]
    assert not advance(study)


@pytest.mark.parametrize(("change", "message"), [
    ("space", "width cannot be perturbed because it changes the architecture"),
    ("categorical", "activation cannot be perturbed because it changes the architecture"),
    ("population: 4", "population: Input should be greater than or equal to 2"),
    ("interval: 1", "pbt's interval (4) must be below epochs (4)"),
    ("pruner", "pbt replaces the pruner"),
    ("kfold", "a k-fold study reports folds"),
    ("checkpoint", "set checkpoint: true"),
    ("trials", "population (4) is the study's trials (6)"),
    ("nothing", "pbt has nothing to perturb"),
    ("objectives", "one objective"),
])
def test_bad_pbt_is_one_line_exit_2_nothing_written(tmp_path: Path, change: str,
                                                    message: str) -> None:
    path = pbt_yaml(tmp_path)
    text = path.read_text()
    text = {
        "space": text.replace("quantile: 0.25}", "quantile: 0.25, perturb: [lr, width]}")
        .replace("width: 32", "width: {type: int, low: 16, high: 64}"),
        "categorical": text.replace("quantile: 0.25}", "quantile: 0.25, perturb: [activation]}")
        + "  activation: [relu, tanh]\n",
        "population: 4": text.replace("population: 4", "population: 1"),
        "interval: 1": text.replace("interval: 1", "interval: 4"),
        "pruner": text.replace("sampler: random", "sampler: random\npruner: median"),
        "kfold": text.replace("validation: 0.2", "validation: {kfold: 3}"),
        "checkpoint": text + "checkpoint: false\n",
        "trials": text.replace("sampler: random", "sampler: random\ntrials: 6"),
        "nothing": text.split("space:")[0] + "space:\n  lr: 0.01\n  width: [16, 32]\n",
        "objectives": text.replace("metric: accuracy", "objectives: [accuracy, params]"),
    }[change]
    path.write_text(text)
    assert_refused(path, tmp_path, message)


def _digits(tmp: Path) -> Any:
    from tuner.config import load_spec
    from tuner.training.assets import StudyAssets

    spec = load_spec(pbt_yaml(tmp))
    return StudyAssets(spec, device="cpu", data_dir=str(tmp / "data")).data()


def test_new_hyperparameters_take_effect_after_loading_a_checkpoint(tmp_path: Path) -> None:
    """torch's load_state_dict puts the saved lr, weight_decay and momentum back into the
    param groups, and schedules keep their base_lrs: the loop sets the new ones after."""
    from tuner.training import checkpoints, train
    from tuner.training.context import Context

    data = _digits(tmp_path)
    base = {"width": 16, "depth": 1, "optimizer": "sgd_momentum", "momentum": 0.5,
            "schedule": "cosine", "lr": 0.1, "weight_decay": 1e-4, "dropout": 0.1}
    ctx = Context(device=torch.device("cpu"), seed=0, max_epochs=4, data=data)
    old = train._setup(base, ctx, data)
    train.train_epoch(old, data)
    state = checkpoints.state(old, 1)
    scheduled = old.opt.param_groups[0]["lr"]  # cosine, one epoch in
    new_params = {**base, "lr": 0.2, "weight_decay": 1e-3, "momentum": 0.9, "dropout": 0.4}
    new = train._setup(new_params, ctx, data)
    assert checkpoints.restore(new, state) == 2
    g = new.opt.param_groups[0]
    assert g["weight_decay"] == 1e-3 and g["momentum"] == 0.9
    assert g["lr"] == pytest.approx(scheduled * 2)  # the schedule's place, the new base
    assert g["initial_lr"] == 0.2 and new.sched.base_lrs == [0.2]
    new.sched.step()
    assert new.opt.param_groups[0]["lr"] == pytest.approx(
        0.2 * (1 + torch.cos(torch.tensor(2 * torch.pi / 4)).item()) / 2)
    drops = [m.p for m in new.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.4 for p in drops)
    for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the weights carried over
    buf_old = old.opt.state[next(iter(old.model.parameters()))]["momentum_buffer"]
    buf_new = new.opt.state[next(iter(new.model.parameters()))]["momentum_buffer"]
    assert torch.equal(buf_old, buf_new)  # and the optimizer state
    # backbone_lr_scale: the head's group and the backbone's keep their ratio
    scaled = {**base, "schedule": "constant", "backbone_lr_scale": 0.1}
    run = train._setup(scaled, ctx, data)
    if len(run.opt.param_groups) > 1:
        s = checkpoints.state(run, 1)
        run2 = train._setup({**scaled, "lr": 0.3}, ctx, data)
        checkpoints.restore(run2, s)
        assert [g["lr"] for g in run2.opt.param_groups] == pytest.approx([0.3, 0.03])


def _run(tmp: Path, path: Path, **options: Any) -> api.Result:
    return api.run(str(path), storage=f"sqlite:///{tmp / 'tuner.db'}", device="cpu",
                   checkpoint_dir=str(tmp / "ck"), data_dir=str(tmp / "data"), **options)


def test_a_timeout_alone_keeps_the_population(tmp_path: Path) -> None:
    """A time budget lifts the trial limit of an ordinary study; under PBT the trials are the
    population, so `--timeout` alone (on run and on resume) keeps it at `population`."""
    path = pbt_yaml(tmp_path, population=3, epochs=2, interval=1)
    result = _run(tmp_path, path, timeout=60)  # before the fix: members for a minute
    ts = result.handle.study.get_trials(deepcopy=False)
    assert sorted({lineage(t) for t in ts}) == [0, 1, 2]
    assert result.trials_run == 3
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    again = api.resume("pbt", storage=url, device="cpu", checkpoint_dir=str(tmp_path / "ck"),
                       data_dir=str(tmp_path / "data"), timeout=60)
    assert again.trials_run == 0
    assert len(again.handle.study.get_trials(deepcopy=False)) == len(ts)
    assert Budget(connect(url).engine, "pbt").state().target == 3


def test_past_its_deadline_a_population_says_how_to_go_on(tmp_path: Path) -> None:
    """The deadline passed with members waiting: `tuner resume` names --timeout, and does
    nothing else; `--timeout` then finishes the population."""
    path = pbt_yaml(tmp_path, population=3, epochs=2, interval=1)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    common = ["--storage", url, "--device", "cpu", "--checkpoint-dir", str(tmp_path / "ck"),
              "--data-dir", str(tmp_path / "data")]
    r = runner.invoke(app, ["run", str(path), "--workers", "0", *common])
    assert r.exit_code == 0, r.output
    Budget(connect(url).engine, "pbt").set_deadline(-1.0)  # the study's time ran out
    r = runner.invoke(app, ["resume", "pbt", *common])
    assert r.exit_code == 0, r.output
    assert "time budget ran out" in r.output and "--timeout SECONDS" in r.output
    r = runner.invoke(app, ["resume", "pbt", "--timeout", "600", *common])
    assert r.exit_code == 0, r.output
    ts = trials(url, "pbt")
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert sorted(lineage(t) for t in done) == [0, 1, 2]


def test_a_digits_population_exploits_explores_records_lineage_and_retrains(
        tmp_path: Path) -> None:
    path = pbt_yaml(tmp_path, population=4, epochs=3, interval=1)
    result = _run(tmp_path, path, keep_checkpoints=True)
    study = result.handle.study
    ts = study.get_trials(deepcopy=False)
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # 4 members in 4 budget slots, each trained to the last epoch with its whole curve
    assert len({lineage(t) for t in ts}) == 4
    assert Budget(connect(f"sqlite:///{tmp_path / 'tuner.db'}").engine, "pbt").state().taken == 4
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert sorted(lineage(t) for t in done) == [0, 1, 2, 3]
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in done)
    assert result.trials_run == 4  # members, not the 12 segments they trained in
    # every generation: each member paused there once, one of the 4 exploited (k = 1)
    by_number = {t.number: t for t in ts}
    conts = [t for t in ts if PROMOTION_OF_ATTR in t.user_attrs]
    for g in (1, 2):
        at_g = [t for t in conts if t.user_attrs[PBT_ATTR]["epoch"] == g]
        assert len(at_g) == 4
        exploits = [t for t in at_g if t.user_attrs[PBT_ATTR]["donor"] is not None]
        assert len(exploits) == 1
        (x,) = exploits
        rec = x.user_attrs[PBT_ATTR]
        ranked = sorted(at_g, key=lambda t: -by_number[t.user_attrs[PROMOTION_OF_ATTR]]
                        .intermediate_values[g])
        assert lineage(x) == lineage(ranked[-1]) and rec["donor"] == lineage(ranked[0])
        donor = by_number[rec["donor_trial"]]
        assert by_number[x.user_attrs[PROMOTION_OF_ATTR]].user_attrs[PAUSED_ATTR] == g
        for k, v in x.params.items():  # the donor's params, the perturbed ones changed
            if k in rec["changes"]:
                assert rec["changes"][k] == [donor.params[k], v]
                d = x.distributions[k]
                assert d.low <= v <= d.high
            else:
                assert v == donor.params[k]
        assert rec["changes"]
        # the recipient's own curve stays whole; its schedule is the donor's plus the change
        paused = by_number[x.user_attrs[PROMOTION_OF_ATTR]]
        assert sorted(paused.intermediate_values) == list(range(1, g + 1))
        assert all(x.intermediate_values[e] == v for e, v in paused.intermediate_values.items())
        assert max(x.intermediate_values) > g  # it went on from there
        assert rec["schedule"][:-1] == schedule(donor)
        assert rec["schedule"][-1] == {"from_epoch": g + 1, "params": x.params}
    # optuna-dashboard's trial table says what PBT did with each segment (tuner_state): the
    # last generation's exploiting member "exploited", the others "complete"; a segment that
    # paused at a generation and went on "promoted" (read afresh, as the dashboard does)
    fresh = {t.number: t for t in connect(f"sqlite:///{tmp_path / 'tuner.db'}", access="read")
             .get_all_trials(study._study_id)}
    for t in conts:
        if t.user_attrs[PBT_ATTR]["epoch"] == 2:
            exploited = t.user_attrs[PBT_ATTR]["donor"] is not None
            assert fresh[t.number].user_attrs["tuner_state"] == ("exploited" if exploited
                                                                 else "complete")
        promoted = fresh[t.user_attrs[PROMOTION_OF_ATTR]]
        assert promoted.user_attrs["tuner_state"] == "promoted"
        # the donor's weights as of the generation were kept for it
        snap = tmp_path / "ck" / "pbt" / f"trial-{rec['donor']}-gen{g}.pt"
        assert torch.load(snap, weights_only=True)["epoch"] == g
    # `tuner trials` shows each member and what PBT did to it
    r = runner.invoke(app, ["trials", "pbt", "--storage", f"sqlite:///{tmp_path / 'tuner.db'}",
                            "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = {row["number"]: row for row in json.loads(r.output)}
    for x in conts:
        rec = x.user_attrs[PBT_ATTR]
        if rec["donor"] is not None:
            assert f"weights of member {rec['donor']}" in rows[x.number]["pbt"]
            assert rows[x.number]["member"] == lineage(x)
    # the report shows the lineage and the best member's schedule
    from tuner.results import report

    rep = report.build(result.handle, tmp_path / "report")
    page = rep.html.read_text()
    assert "Population (PBT)" in page and "weights of member" in page
    # retrain replays the best member's schedule: switching params where it changes
    best = max(done, key=lambda t: t.value)
    plan = schedule(best)
    assert plan[0]["from_epoch"] == 1
    seen: list[tuple[int, float]] = []
    from tuner.training import train

    real_setup = train._setup

    def spy(params: Any, ctx: Any, data: Any) -> Any:
        seen.append((len(seen), float(params["lr"])))
        return real_setup(params, ctx, data)

    train._setup = spy
    try:
        retrained = api.retrain("pbt", storage=f"sqlite:///{tmp_path / 'tuner.db'}",
                                device="cpu", data_dir=str(tmp_path / "data"),
                                out=str(tmp_path / "final"))
    finally:
        train._setup = real_setup
    assert [lr for _, lr in seen] == [pytest.approx(s["params"]["lr"]) for s in plan]
    card = json.loads(retrained.card.read_text())
    if len(plan) > 1:
        assert [s["from_epoch"] for s in card["schedule"]] == [s["from_epoch"] for s in plan]


def test_an_exploiting_member_takes_the_donors_snapshot_weights_and_optimizer(
        tmp_path: Path) -> None:
    """The copy itself: the recipient's checkpoint becomes the donor's as of the generation
    (weights and optimizer state, compared tensor by tensor), with its own curve; a retry
    that trained past the generation keeps its own file."""
    from tuner.training import checkpoints, train
    from tuner.training.context import CheckpointStore, Context
    from tuner.trials import TrialRunner, snapshots

    data = _digits(tmp_path)
    params = {"width": 16, "depth": 1, "lr": 0.01}
    folder = tmp_path / "ck" / "pbt"
    states = {}
    for lin in (0, 1):  # two members, each trained two epochs from its own seed
        ctx = Context(device=torch.device("cpu"), seed=lin, max_epochs=4, data=data)
        run = train._setup(params, ctx, data)
        for _ in range(2):
            train.train_epoch(run, data)
        states[lin] = checkpoints.state(run, 2)
        history = [{"epoch": 1, "value": 0.1 + lin}, {"epoch": 2, "value": 0.2 + lin}]
        CheckpointStore(folder / f"trial-{lin}.pt").save({**states[lin], "_history": history})
    from tuner.config import load_spec
    from tuner.training.assets import StudyAssets

    assets = StudyAssets(load_spec(pbt_yaml(tmp_path)), device="cpu",
                         data_dir=str(tmp_path / "data"))
    r = TrialRunner(assets, checkpoint_dir=str(tmp_path / "ck"), stop=threading.Event())
    snapshots.keep(r.files, 1, 2)  # member 1 paused at generation 2
    CheckpointStore(folder / "trial-1.pt").save({**states[1], "epoch": 3})  # and went on
    trial = optuna.trial.create_trial(state=TrialState.WAITING, params={}, distributions={},
                                      user_attrs={PBT_ATTR: {"epoch": 2, "donor": 1}})
    snapshots.take(r.files, trial, 0, r.schedule.weights_from(trial))
    got = CheckpointStore(folder / "trial-0.pt").load()
    assert got["epoch"] == 2  # the donor's state as of generation 2, not its epoch 3
    for k, v in states[1]["model"].items():
        assert torch.equal(got["model"][k], v)
        assert not torch.equal(v, states[0]["model"][k])
    saved = states[1]["optimizer"]["state"]
    for i, st in saved.items():
        for name, v in st.items():
            assert torch.equal(got["optimizer"]["state"][i][name], v)
    assert [h["value"] for h in got["_history"]] == [0.1, 0.2]  # its own curve
    # a retry that trained on past the generation keeps what it has
    CheckpointStore(folder / "trial-0.pt").save({**states[0], "epoch": 3, "_history": []})
    snapshots.take(r.files, trial, 0, r.schedule.weights_from(trial))
    kept = CheckpointStore(folder / "trial-0.pt").load()
    assert kept["epoch"] == 3
    assert all(torch.equal(kept["model"][k], v) for k, v in states[0]["model"].items())


def test_the_end_of_a_population_deletes_snapshots_and_half_written_checkpoints(
        tmp_path: Path) -> None:
    """A worker killed -9 inside CheckpointStore.save leaves its temporary file (the rename
    never came); once no member runs or waits, nobody is writing, and it goes with the
    snapshots. The members' own checkpoints are their lineages' business."""
    from tuner.config import load_spec
    from tuner.training.assets import StudyAssets
    from tuner.training.context import CheckpointStore
    from tuner.trials import TrialRunner

    folder = tmp_path / "ck" / "pbt"
    CheckpointStore(folder / "trial-0.pt").save({"epoch": 3})
    CheckpointStore(folder / "trial-0-gen2.pt").save({"epoch": 2})
    (folder / ".tmp-k1ll3d.pt").write_bytes(b"PK\x03\x04 half a zip")  # what the kill left
    assets = StudyAssets(load_spec(pbt_yaml(tmp_path)), device="cpu",
                         data_dir=str(tmp_path / "data"))
    r = TrialRunner(assets, checkpoint_dir=str(tmp_path / "ck"), stop=threading.Event())
    r.drop_snapshots()
    assert sorted(f.name for f in folder.iterdir()) == ["trial-0.pt"]


@pytest.mark.slow
def test_two_worker_processes_run_a_population_and_survive_a_killed_member(
        tmp_path: Path) -> None:
    path = pbt_yaml(tmp_path, population=4, epochs=6, interval=2,
                    space=SPACE.replace("batch_size: 64", "batch_size: 16"))
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    # a grace period that a loaded CPU does not outlast by accident (beats come from a thread)
    procs = [start_worker(str(path), url, tmp_path, f"worker{i}", "--worker-index", str(i),
                          "--grace-period", "15") for i in range(2)]

    pids = {p.pid for p in procs}

    def continuing():  # a member's continuation, training on some worker (which has said so:
        for t in trials(url, "pbt"):  # a claimed trial gets its worker attr a moment later)
            # that has not reported an epoch of its segment yet: one read and the kill take
            # well under the two epochs it has left (a victim read a moment before it told its
            # result was killed after it, and there was no retry to check)
            if (t.state == TrialState.RUNNING and PROMOTION_OF_ATTR in t.user_attrs
                    and worker_pid(t) in pids
                    and max(t.intermediate_values) <= t.user_attrs[PBT_ATTR]["epoch"]):
                return t
        return None

    victim = wait_for("a continuation training", continuing, 300, every=0.05)
    doomed = next(p for p in procs if p.pid == worker_pid(victim))
    kill(doomed)
    doomed.popen.wait(10)
    dead = next(t for t in trials(url, "pbt") if t.number == victim.number)
    assert dead.state == TrialState.RUNNING, ("the kill landed after the victim's segment",
                                              dead.state, dead.intermediate_values)
    survivor = next(p for p in procs if p is not doomed)
    assert survivor.wait(180) == 0, survivor.output()
    ts = trials(url, "pbt")
    left = [(t.number, t.state.name, t.user_attrs) for t in ts
            if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, (left, victim.number, survivor.output()[-3000:])
    retries = [t for t in ts if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and lineage(retries[0]) == lineage(victim)
    assert retries[0].params == victim.params
    assert retries[0].user_attrs.get(PBT_ATTR) == victim.user_attrs[PBT_ATTR]
    assert Budget(connect(url).engine, "pbt").state().taken == 4
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert sorted(lineage(t) for t in done) == [0, 1, 2, 3]
    assert all(sorted(t.intermediate_values) == list(range(1, 7)) for t in done)
    assert len({worker_pid(t) for t in ts}) >= 2
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))  # snapshots and all
