"""The CUDA-only branches of tuner, forced onto the CPU where they can be (issue 15): channels
last, checkpoints across devices, torch.compile across trials, out-of-memory and broken
GPUs, the device and fit checks. Tests that need a real GPU are marked ``gpu`` and skip
without one; benchmarks/gpu_check.sh runs them."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from tuner import study as st
from tuner import train, vocab
from tuner.context import CheckpointStore, Context
from tuner.data import DataBundle, load_builtin
from tuner.data import _bundle as bundle_mod
from tuner.device import resolve
from tuner.errors import DeviceBroken, TunerError
from tuner.models import build
from tuner.objective import INFEASIBLE_ATTR, TrialRunner, fail_reason
from tuner.settings import Settings
from tuner.spec import load_spec
from tuner.storage import Heartbeat, connect
from tuner.worker import Worker

pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
CPU = torch.device("cpu")
GiB = 2**30


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> DataBundle:
    return load_builtin("mnist", mnist_dir, validation=0.1, seed=0, download=False)


def _ctx(data: DataBundle, max_epochs: int, **kw: object) -> Context:
    device = kw.pop("device", CPU)
    return Context(device=device, seed=3, max_epochs=max_epochs, task=data.task,
                   metric=vocab.DEFAULT_METRIC[data.task], data=data.to(device), **kw)


class ViewCNN(nn.Module):
    """A user's CNN that flattens with ``view``: fails on channels_last inputs."""

    def __init__(self, opt_in: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 10)
        if opt_in:
            self.channels_last = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.size(0), -1))


# ---- 1. channels_last only where asked for ------------------------------------------------
@pytest.fixture
def cuda_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loop's CUDA-only channels_last branch, taken on the CPU."""
    monkeypatch.setattr(train, "_channels_last", lambda m, _d: train.wants_channels_last(m))


def test_a_user_cnn_that_flattens_with_view_trains_on_the_gpu_branch(mnist, cuda_branch):
    ctx = _ctx(mnist, 1, build_model=lambda p: ViewCNN())
    assert 0.0 <= train.fit({"lr": 1e-3, "batch_size": 64}, ctx) <= 1.0


def test_the_builtin_cnn_trains_channels_last_on_the_gpu_branch(mnist, cuda_branch):
    model = build("cnn", {}, mnist.inputs, mnist.num_outputs)
    assert train.wants_channels_last(model)
    ctx = _ctx(mnist, 1, build_model=lambda p: build("cnn", p, mnist.inputs, 10))
    assert 0.0 <= train.fit({"lr": 1e-3, "batch_size": 64, "channels": 4}, ctx) <= 1.0


def test_the_preflight_uses_channels_last_as_training_does(mnist):
    out = train.probe(ViewCNN(), mnist, amp=True)
    assert out.shape == (2, 10)
    with pytest.raises(RuntimeError, match="view"):  # opted in, yet cannot take NHWC
        train.probe(ViewCNN(opt_in=True), mnist, amp=False)


# ---- 4. optimizer settings do not travel with a checkpoint ----------------------------------
RESUME = {"lr": 0.1, "width": 32, "batch_norm": True, "optimizer": "adamw",
          "weight_decay": 0.01, "batch_size": 50}


def _fused_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_optimizer as on CUDA (fused Adam), on the CPU."""
    plain = train.make_optimizer

    def fused(p, model, device):
        opt = plain(p, model, device)
        return torch.optim.AdamW(model.parameters(), lr=opt.defaults["lr"],
                                 weight_decay=opt.defaults["weight_decay"], fused=True)

    monkeypatch.setattr(train, "make_optimizer", fused)


def test_a_fused_checkpoint_resumes_as_this_devices_optimizer(mnist, tmp_path, monkeypatch):
    whole = _ctx(mnist, 4, checkpoints=CheckpointStore(tmp_path / "whole.pt"))
    expected = train.fit(RESUME, whole)

    store = CheckpointStore(tmp_path / "trial.pt")
    with monkeypatch.context() as m:  # the first two epochs as a GPU worker runs them
        _fused_optimizer(m)
        train.fit(RESUME, _ctx(mnist, 2, checkpoints=store))
    assert store.load()["optimizer"]["param_groups"][0]["fused"] is True
    resumed = _ctx(mnist, 4, checkpoints=store)
    value = train.fit(RESUME, resumed)

    assert value == pytest.approx(expected, abs=0.02)
    a = CheckpointStore(tmp_path / "whole.pt").load()
    b = store.load()
    assert not b["optimizer"]["param_groups"][0].get("fused")  # this device's setting won
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-3), k


def test_load_optimizer_state_keeps_fused_and_lays_state_out_like_params():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    saved_opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    saved_opt.step()
    saved = saved_opt.state_dict()

    plain = nn.Conv2d(3, 4, 3)  # a CPU retry: no channels_last, no fused
    opt = torch.optim.AdamW(plain.parameters(), lr=0.1)
    train.load_optimizer_state(opt, saved)
    assert not opt.param_groups[0].get("fused")
    st_w = opt.state[plain.weight]
    assert st_w["exp_avg"].is_contiguous() and st_w["step"].device.type == "cpu"
    assert torch.equal(st_w["exp_avg"], saved["state"][0]["exp_avg"])

    back = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)  # and the other way
    train.load_optimizer_state(back, opt.state_dict())
    assert back.param_groups[0]["fused"] is True


# ---- 2. torch.compile does not pile up graphs across trials -------------------------------
@pytest.mark.slow
def test_five_compiled_trials_stay_under_the_recompile_limit(mnist, monkeypatch, caplog):
    monkeypatch.setattr(train, "COMPILE_BACKEND", "eager")  # dynamo's caches, no compiler
    caplog.set_level(logging.WARNING)
    for width in (16, 24, 32, 40, 48):
        ctx = _ctx(mnist, 1, compile=True)
        assert 0.0 <= train.fit({"width": width, "batch_size": 100, "lr": 1e-3}, ctx) <= 1.0
    assert not [r for r in caplog.records if "limit" in r.getMessage()]


def test_compiled_training_drops_the_last_partial_batch(mnist, monkeypatch):
    monkeypatch.setattr(train, "compile_model", lambda model: model)
    sizes: list[int] = []
    ctx = _ctx(mnist, 1, compile=True,
               build_model=lambda p: _Recorder(build("mlp", p, mnist.inputs, 10), sizes))
    train.fit({"batch_size": 128}, ctx)
    n = len(mnist.train)
    train_sizes = sizes[:n // 128 + 1]
    assert n % 128 and set(train_sizes[:n // 128]) == {128} and len(sizes) == n // 128 + 1


class _Recorder(nn.Module):
    def __init__(self, inner: nn.Module, sizes: list[int]) -> None:
        super().__init__()
        self.inner, self.sizes = inner, sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.inner(x)


# ---- 8. evaluation backs off on out of memory ---------------------------------------------
class _Small(nn.Module):
    """Runs out of 'GPU memory' on batches over 100 samples."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 100:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_evaluation_halves_its_batch_until_it_fits(mnist):
    torch.manual_seed(0)
    model = build("mlp", {}, mnist.inputs, 10)
    expected = train.evaluate(model, mnist, "train")
    got = train.evaluate(_Small(model), mnist, "train")
    assert got == pytest.approx(expected, rel=1e-5)


# ---- 6. out of memory is infeasible; a device-side assert ends the process ----------------
TRAINER = '''
import torch

def fit(params, ctx):
    if params["kind"] == "assert":
        raise RuntimeError("CUDA error: device-side assert triggered\\n"
                           "CUDA kernel errors might be asynchronously reported\\n"
                           "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
    if params["kind"] == "oom" or params["x"] > 0.5:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    ctx.report(1, params["x"])
    return params["x"]
'''


def _handle(tmp_path: Path, kind: str, trials: int, sampler: str = "random"):
    (tmp_path / "fit.py").write_text(TRAINER)
    path = tmp_path / "gpu.yaml"
    path.write_text(textwrap.dedent(f"""
        name: gpu
        trainer: fit.py:fit
        task: regression
        metric: mse
        epochs: 1
        trials: {trials}
        sampler: {sampler}
        pruner: none
        space:
          x: {{type: float, low: 0.0, high: 1.0}}
          kind: {kind}
    """))
    hb = Heartbeat(interval=1, grace_period=2)
    handle = st.create_or_resume(connect(f"sqlite:///{tmp_path / 'tuner.db'}", hb),
                                 load_spec(path))
    settings = Settings(device="cpu", checkpoint_dir=str(tmp_path / "ckpt"))
    return handle, Worker(handle, TrialRunner.of(handle.spec, settings), heartbeat=hb)


def test_out_of_memory_trials_are_infeasible_not_failures(tmp_path):
    handle, worker = _handle(tmp_path, "oom", trials=4)
    summary = worker.run()  # four in a row, and the worker did not stop at three
    assert (summary.trials, summary.stopped_because) == (4, "budget spent")
    trials = handle.study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 4
    assert all(t.user_attrs[INFEASIBLE_ATTR] for t in trials)
    assert "out of memory" in trials[0].user_attrs["fail_reason"]


def test_the_sampler_sees_out_of_memory_as_a_violated_constraint(tmp_path):
    handle, worker = _handle(tmp_path, "ok", trials=12, sampler="tpe")
    worker.run()
    trials = handle.study.trials
    oom = [t for t in trials if t.params["x"] > 0.5]
    assert oom and all(t.state == TrialState.PRUNED for t in oom)
    assert all(t.constraints == {"gpu_memory": 1.0} for t in oom)
    assert all(not t.constraints for t in trials if t.params["x"] <= 0.5)


def test_a_device_side_assert_ends_the_worker_in_one_line(tmp_path):
    handle, worker = _handle(tmp_path, "assert", trials=3)
    with pytest.raises(DeviceBroken, match="device-side assert") as e:
        worker.run()
    assert "\n" not in str(e.value) and e.value.exit_code == 75
    (t,) = handle.study.trials  # it stopped at once; the trial failed with its real cause
    assert t.state == TrialState.FAIL
    assert "device-side assert triggered" in t.user_attrs["fail_reason"]


def test_fail_reason_keeps_every_line_and_the_cause():
    try:
        try:
            raise RuntimeError("CUDA error: an illegal memory access\nCompile with DSA")
        except RuntimeError as inner:
            raise ValueError("trainer failed") from inner
    except ValueError as e:
        reason = fail_reason(e)
    assert "illegal memory access" in reason and "trainer failed" in reason
    assert "\n" not in reason


# ---- 7. --device auto judges the GPU; the fit check uses free memory ----------------------
def _gpu(monkeypatch: pytest.MonkeyPatch, free: int | Exception, total: int = 141 * GiB) -> None:
    def mem_get_info(_device=None):
        if isinstance(free, Exception):
            raise free
        return free, total

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _i=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)


def test_auto_refuses_a_full_gpu_in_one_line_naming_it(monkeypatch):
    _gpu(monkeypatch, free=300 * 2**20)
    with pytest.raises(TunerError, match=r"NVIDIA H200\) has 0.3 of 141 GiB free"):
        resolve("auto")


def test_auto_refuses_a_gpu_held_in_exclusive_mode(monkeypatch):
    _gpu(monkeypatch, free=RuntimeError("CUDA error: all CUDA-capable devices are busy"))
    with pytest.raises(TunerError, match="NVIDIA H200.*busy"):
        resolve("auto")


def test_auto_takes_a_free_gpu(monkeypatch):
    _gpu(monkeypatch, free=139 * GiB)
    assert resolve("auto") == "cuda"


def test_the_fit_check_keeps_a_margin_of_free_memory_not_of_total(monkeypatch):
    _gpu(monkeypatch, free=139 * GiB)
    cuda0 = torch.device("cuda", 0)
    assert bundle_mod._fits_on_gpu(110 * GiB, cuda0)  # 20% of total kept back 28 GiB
    assert not bundle_mod._fits_on_gpu(130 * GiB, cuda0)
    _gpu(monkeypatch, free=3 * GiB)
    assert not bundle_mod._fits_on_gpu(int(1.5 * GiB), cuda0)  # 2 GiB kept at least


# ---- on a real GPU ------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_a_cuda_checkpoint_resumes_on_the_cpu(mnist, tmp_path):
    cuda = torch.device("cuda")
    whole = _ctx(mnist, 4)
    expected = train.fit(RESUME, whole)
    store = CheckpointStore(tmp_path / "trial.pt")
    train.fit({**RESUME, "depth": 1}, _ctx(mnist, 2, device=cuda, checkpoints=store))
    assert store.load()["optimizer"]["param_groups"][0]["fused"] is True
    value = train.fit({**RESUME, "depth": 1}, _ctx(mnist, 4, checkpoints=store))
    assert abs(value - expected) < 0.1


@pytest.mark.gpu
def test_gpu_a_view_cnn_and_the_builtin_cnn_train_with_amp(mnist):
    cuda = torch.device("cuda")
    for builder in (lambda p: ViewCNN(), lambda p: build("cnn", p, mnist.inputs, 10)):
        ctx = _ctx(mnist, 1, device=cuda, amp=True, build_model=builder)
        assert 0.0 <= train.fit({"lr": 1e-3, "batch_size": 64}, ctx) <= 1.0


# ---- 3. the parent of several local workers checks on the CPU and keeps nothing -----------
def test_the_parent_of_local_workers_preflights_on_the_cpu(mnist_dir, monkeypatch):
    from tuner import api, assets
    from tuner.api._prepare import check

    made: list[assets.StudyAssets] = []
    real = assets.StudyAssets.__init__

    def record(self, *a, **kw):
        real(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(assets.StudyAssets, "__init__", record)
    spec = api.as_spec({"name": "p", "data": "mnist", "model": "cnn", "epochs": 1})
    settings = Settings(device="cuda", data_dir=str(mnist_dir), download=False)
    _, kept = check(spec, settings, local_workers=2)
    assert kept is None
    (a,) = made
    assert a.device == "cpu" and a._bundle is None and a._folds is None  # nothing left


# ---- 12. the training-loop example retried on a CPU after a GPU ---------------------------
def test_the_example_loop_resumes_a_cuda_checkpoint_on_the_cpu(tmp_path):
    import importlib.util

    path = Path(__file__).parent.parent / "examples" / "training_loop" / "train.py"
    spec = importlib.util.spec_from_file_location("example_training_loop", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    params = {"hidden": 32, "dropout": 0.1, "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64,
              "warmup_epochs": 0, "label_smoothing": 0.0}
    store = CheckpointStore(tmp_path / "t.pt")
    ctx = Context(device=CPU, seed=0, max_epochs=1, checkpoints=store)
    example.fit(params, ctx)
    state = store.load()  # as a CUDA worker saves it: a CUDA generator's state
    store.save({**state, "shuffle": torch.zeros(16, dtype=torch.uint8),
                "shuffle_device": "cuda"})
    again = Context(device=CPU, seed=0, max_epochs=2, checkpoints=store)
    assert 0.0 <= example.fit(params, again) <= 1.0
    assert [h["epoch"] for h in again.history] == [2]
