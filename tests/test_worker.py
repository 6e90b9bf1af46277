"""The worker loop in one process on SQLite: budgets, retries, stops, and waiting for other
workers' trials; and how local workers are spread over GPUs."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState
from tuner_procs import write_study

from tuner import storage
from tuner import study as st
from tuner.errors import TunerError
from tuner.local import _visible_device, assign_devices
from tuner.objective import TrialRunner
from tuner.settings import Settings
from tuner.spec import load_spec
from tuner.storage import Heartbeat, connect, record_heartbeat
from tuner.worker import Worker

pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
HB = Heartbeat(interval=1, grace_period=2)


@pytest.fixture
def handle(tmp_path):
    spec = load_spec(write_study(tmp_path / "study", trials=3, epochs=2, sleep=0.01))
    return st.create_or_resume(connect(f"sqlite:///{tmp_path / 'tuner.db'}", HB), spec)


def make_worker(handle, tmp_path, **kw) -> Worker:
    settings = Settings(device="cpu", checkpoint_dir=str(tmp_path / "checkpoints"))
    return Worker(handle, TrialRunner.of(handle.spec, settings), heartbeat=HB, **kw)


def states(handle) -> list[str]:
    return [t.state.name for t in handle.study.get_trials(deepcopy=False)]


def test_runs_the_budget_and_stops(handle, tmp_path):
    summary = make_worker(handle, tmp_path).run()
    assert (summary.trials, summary.stopped_because) == (3, "budget spent")
    assert states(handle) == ["COMPLETE"] * 3
    t = handle.study.trials[0]
    assert t.user_attrs["worker"]["device"] == "cpu" and t.user_attrs["lineage"] == 0


def test_a_retry_runs_first_in_its_failed_trials_slot(handle, tmp_path):
    study, budget = handle.study, handle.budget
    assert budget.acquire()
    lost = study.ask()
    lost.suggest_float("x", 0.0, 1.0)
    study.tell(lost, state=TrialState.FAIL)
    assert storage.retry(study, study.trials[0], budget)
    make_worker(handle, tmp_path).run()
    trials = study.trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert budget.state().taken == 3  # the retry took no slot of its own


def test_retries_give_up_after_max_crashes(handle):
    study, budget = handle.study, handle.budget
    budget.acquire()
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, system_attrs={storage.CRASHES_ATTR: storage.MAX_RETRIES}))
    assert storage.retry(study, study.trials[-1], budget, crashed=False)  # a stop: not counted
    assert budget.state().taken == 1
    assert not storage.retry(study, study.trials[-1], budget)
    assert budget.state().taken == 0  # its slot went back to the budget
    assert len(study.trials) == 2


def test_a_trial_enqueued_by_hand_waits_for_a_slot(handle, tmp_path):
    handle.budget.add(0, None)
    handle.study.enqueue_trial({"x": 0.5})
    summary = make_worker(handle, tmp_path).run()
    assert (summary.trials, summary.stopped_because) == (0, "budget spent")
    assert states(handle) == ["WAITING"]  # kept for later, no failed placeholder trial
    handle.budget.add(1, None)
    make_worker(handle, tmp_path).run()
    assert states(handle) == ["COMPLETE"] and handle.study.trials[0].params["x"] == 0.5


def test_a_stop_mid_trial_leaves_a_resumable_retry(handle, tmp_path):
    runtime_stop: list[threading.Event] = []

    def on_event(e):
        if e.kind == "epoch" and e.epoch == 1:
            runtime_stop[0].set()  # as SIGTERM does

    worker = make_worker(handle, tmp_path, on_event=on_event)
    runtime_stop.append(worker.stop)
    summary = worker.run()
    assert (summary.trials, summary.stopped_because) == (1, "stopped")
    stopped, waiting = handle.study.trials
    assert (stopped.state, waiting.state) == (TrialState.FAIL, TrialState.WAITING)
    assert waiting.user_attrs == {"lineage": 0, "retry_of": 0}
    assert waiting.intermediate_values == stopped.intermediate_values == {1: pytest.approx(
        stopped.params["x"] + 0.01)}
    assert (tmp_path / "checkpoints" / "toy" / "trial-0.pt").exists()

    make_worker(handle, tmp_path).run()
    resumed = handle.study.trials[1]
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["start_epoch"] == 2  # from the checkpoint of epoch 1
    assert not (tmp_path / "checkpoints" / "toy" / "trial-0.pt").exists()  # cleaned up
    assert len([t for t in handle.study.trials if t.state == TrialState.COMPLETE]) == 3


def _other_workers_trial(handle):
    """A trial RUNNING elsewhere: it holds a slot and has a heartbeat."""
    assert handle.budget.acquire()
    trial = handle.study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    record_heartbeat(trial)
    return trial


def test_waits_for_other_workers_trials_before_leaving(handle, tmp_path):
    other = _other_workers_trial(handle)
    worker = make_worker(handle, tmp_path)
    result = []
    thread = threading.Thread(target=lambda: result.append(worker.run()))
    thread.start()
    deadline = time.monotonic() + 30
    while len(handle.study.get_trials(states=(TrialState.COMPLETE,))) < 2:
        record_heartbeat(other)  # the other worker is alive
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.5)
    assert thread.is_alive()  # budget spent, but the other trial might still need it
    handle.study.tell(other, 0.5)
    thread.join(10)
    assert not thread.is_alive() and result[0].stopped_because == "budget spent"


def test_retries_a_dead_workers_trial_while_waiting(handle, tmp_path):
    dead = _other_workers_trial(handle)  # and no more heartbeats: its worker died
    summary = make_worker(handle, tmp_path).run()
    assert summary.trials == 3  # two new trials and the retry of the dead one
    trials = handle.study.trials
    assert trials[dead.number].state == TrialState.FAIL
    assert [t.user_attrs.get("retry_of") for t in trials if t.state == TrialState.COMPLETE
            ].count(dead.number) == 1
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 3


def test_a_retry_queued_while_the_worker_looks_for_work_keeps_it(handle, tmp_path):
    """The reaper (this worker's own heartbeat thread, or another worker) may fail a dead
    worker's trial and queue its retry after this worker found no trial to take but before it
    asked whether any still runs: the retry is neither RUNNING nor taken, and the worker must
    not leave it WAITING (once it did, and a study ended with a retry never run)."""
    worker = make_worker(handle, tmp_path)
    for _ in range(2):
        assert handle.budget.acquire()  # the budget's other slots: spent
    dead = _other_workers_trial(handle)  # its worker died after its first beat
    assert worker._next_trial() is None  # nothing waits, no slot is free
    time.sleep(HB.grace_period + 1)
    assert storage.fail_stale_trials(handle.study, handle.budget) == [dead.number]  # the reaper
    assert worker._why_idle() is None  # so it loops, and takes the retry
    retry = worker._next_trial()
    assert retry is not None and retry.user_attrs["retry_of"] == dead.number


def test_a_trial_finished_elsewhere_is_not_counted(handle, tmp_path):
    worker = make_worker(handle, tmp_path)
    handle.budget.acquire()
    trial = handle.study.ask()
    handle.study.tell(trial, state=TrialState.FAIL)  # as the stale-trial check does
    from tuner.objective import Outcome

    assert not worker._tell(trial, Outcome(TrialState.COMPLETE, 1.0))
    assert handle.study.trials[0].state == TrialState.FAIL


def test_a_stalled_trial_is_failed_retried_and_handed_to_on_stall(handle, tmp_path):
    """The worker fails a hung trial and queues its retry, then hands the error to the entry
    point's ``on_stall`` (the CLI's exits the process); the worker itself never exits, and
    the heartbeat thread stops watching the trial (it would fail it again each beat)."""
    from tuner.errors import TrialStalled

    stalls: list[TrialStalled] = []
    worker = make_worker(handle, tmp_path, stall_timeout=3, on_stall=stalls.append)
    hung = _other_workers_trial(handle)
    worker.beat = storage.HeartbeatThread(handle.study, HB.interval, worker.patience)
    worker.beat.trial = hung
    worker._stalled(hung, 4.0)
    assert [type(e) for e in stalls] == [TrialStalled] and "trial 0 finished no epoch" in str(
        stalls[0])
    assert worker.beat.trial is None
    trials = handle.study.trials
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("stalled:")
    assert [t.user_attrs.get("retry_of") for t in trials[1:]] == [0]


@pytest.mark.parametrize(("workers", "device", "gpus", "per_gpu", "expected"), [
    (4, "cpu", 2, None, [None] * 4),
    (3, "auto", 0, None, [None] * 3),
    (2, "cuda:1", 4, None, [None] * 2),  # all on the GPU asked for
    (2, "cuda", 4, None, ["0", "1"]),
    (4, "cuda", 2, None, ["0", "1", "0", "1"]),  # round-robin
    (3, "auto", 2, None, ["0", "1", "0"]),
    (6, "cuda", 4, None, ["0", "1", "2", "3", "0", "1"]),  # no GPU left idle
    (5, "cuda", 4, None, ["0", "1", "2", "3", "0"]),
    (4, "cuda", 4, 2, ["0", "0", "1", "1"]),  # blocks when --workers-per-gpu is given
    (1, "cuda", 1, None, ["0"]),
])
def test_assign_devices(workers, device, gpus, per_gpu, expected):
    envs = assign_devices(workers, device, gpus, per_gpu)
    assert [e.get("CUDA_VISIBLE_DEVICES") for e in envs] == expected


def test_assign_devices_refuses_more_workers_than_gpus_hold():
    with pytest.raises(TunerError, match="--workers-per-gpu"):
        assign_devices(4, "cuda", 2, 1)


def test_gpu_indices_follow_the_parents_visible_devices():
    assert _visible_device("1", "2,3") == "3"
    assert _visible_device("0", None) == "0"
    assert _visible_device("0", "GPU-5e0a,GPU-77b1") == "GPU-5e0a"
    assert _visible_device("1", "GPU-5e0a, GPU-77b1") == "GPU-77b1"
    mig = "MIG-4b1a2f0e-8c1d-5f6e-9a7b-0c1d2e3f4a5b"
    assert _visible_device("0", mig) == mig
