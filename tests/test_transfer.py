"""Transfer learning: weights from disk, torchvision architectures, freeze and backbone_lr_scale.
Every state_dict here is made by the test itself: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuner.cli import app
from tuner.data import DataBundle, load_builtin
from tuner.errors import UserCodeError
from tuner.kinds import InputKind, Inputs
from tuner.models import build
from tuner.training.context import Context
from tuner.training.train import fit, make_optimizer
from tuner.training.transfer import blocks, load_weights

MNIST = Inputs(InputKind.image, (1, 28, 28))
SMALL = {"depth": 1, "width": 16}


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> DataBundle:
    return load_builtin("mnist", mnist_dir, validation=0.2, seed=0, download=False)


def _run(tmp_path: Path, mnist_dir: Path, study: str, *extra: str) -> object:
    f = tmp_path / "s.yaml"
    f.write_text(study)
    return CliRunner().invoke(app, ["run", str(f), "--device", "cpu", "--trials", "1", "-q",
                                    "--storage", f"sqlite:///{tmp_path / 't.db'}",
                                    "--data-dir", str(mnist_dir), "--no-download",
                                    "--checkpoint-dir", str(tmp_path / "ckpt"), *extra])


def _no_study(tmp_path: Path) -> bool:
    """Nothing written: no database, or one (opened to check the URL) without a study."""
    import optuna

    db = tmp_path / "t.db"
    return not db.exists() or not optuna.get_all_study_names(f"sqlite:///{db}")


def _ctx(data: DataBundle, epochs: int, base: Path, family: str = "mlp") -> Context:
    from tuner.config import parse_spec
    from tuner.training.assets import StudyAssets

    spec = parse_spec({"name": "t", "model": family}, base_dir=str(base))
    assets = StudyAssets(spec, device="cpu", data_dir=str(base))
    return Context(device=torch.device("cpu"), seed=0, max_epochs=epochs, data=data,
                   build_model=assets.model_builder(data))


def _keep(ctx: Context) -> list[torch.nn.Module]:
    """The models ``ctx`` builds, kept to look at after training."""
    built: list[torch.nn.Module] = []
    inner = ctx.build_model
    ctx.build_model = lambda params: built.append(inner(params)) or built[-1]
    return built


def test_fine_tuning_starts_from_the_weights_and_freeze_keeps_the_backbone(
        mnist: DataBundle, tmp_path: Path) -> None:
    ctx = _ctx(mnist, 4, tmp_path)
    built = _keep(ctx)
    trained = fit({**SMALL, "lr": 3e-3}, ctx)
    assert trained > 0.6, ctx.history
    torch.save(built[-1].state_dict(), tmp_path / "w.pt")

    # with a tiny learning rate, one epoch from the weights keeps their accuracy; from scratch not
    slow = {**SMALL, "lr": 1e-6, "epochs": 1}
    started = fit({**slow, "weights": "w.pt"}, _ctx(mnist, 1, tmp_path))
    scratch = fit(slow, _ctx(mnist, 1, tmp_path))
    assert started > 0.6 > scratch + 0.2, (started, scratch)

    # freeze: 1 keeps the hidden layer exactly as loaded; the head still learns
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    ctx = _ctx(mnist, 1, tmp_path)
    built = _keep(ctx)
    fit({**SMALL, "lr": 1e-2, "weights": "w.pt", "freeze": 1}, ctx)
    after = built[-1].state_dict()
    assert torch.equal(after["1.weight"], saved["1.weight"])
    assert not torch.equal(after["3.weight"], saved["3.weight"])


def test_backbone_lr_scale_gives_the_head_the_full_rate() -> None:
    model = build("mlp", {"depth": 2, "width": 8}, MNIST, 10)
    assert [len(b) for b in blocks(model)] == [2, 2, 2]  # Linear weight+bias per block
    p = {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0, "backbone_lr_scale": 0.01}
    opt = make_optimizer(p, model, torch.device("cpu"))
    assert [g["lr"] for g in opt.param_groups] == [0.1, pytest.approx(0.001)]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4]
    assert len(make_optimizer({**p, "backbone_lr_scale": 1.0}, model,
                              torch.device("cpu")).param_groups) == 1


def test_torchvision_resnet_fits_grey_images_and_takes_imagenet_shaped_weights(
        tmp_path: Path) -> None:
    import torchvision

    model = build("torchvision:resnet18", {}, MNIST, 10)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert [b[0].split(".")[0] for b in blocks(model)] == [
        "conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # 3 colours, 1000 classes
    torch.save(imagenet, tmp_path / "r18.pt")
    kept = load_weights(model, tmp_path / "r18.pt")
    assert kept == ["fc.weight", "fc.bias"]  # the head stays fresh for the 10 classes
    assert torch.allclose(model.conv1.weight, imagenet["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer3[0].conv1.weight, imagenet["layer3.0.conv1.weight"])
    rgb = build("torchvision:mobilenet_v3_small", {}, Inputs(InputKind.image, (3, 32, 32)), 4)
    assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("case, phrase", [
    ("missing", "no file at"),
    ("not_state_dict", "not a state_dict of tensors"),
    ("not_torch", "not a state_dict that loads with weights_only=True"),
    ("fewer_layers", "lacks '5.weight'"),  # a hidden layer missing, not only the head
    ("more_layers", "has '5.weight'"),
    ("other_width", "'1.weight' is shaped (32, 784) but the model's is (16, 784)"),
])
def test_weights_that_do_not_fit_are_one_line_before_any_write(
        tmp_path: Path, mnist_dir: Path, case: str, phrase: str) -> None:
    depth, width = 1, 16
    w = tmp_path / "w.pt"
    if case == "not_state_dict":
        torch.save([torch.zeros(2)], w)
    elif case == "not_torch":
        w.write_text("hello")
    elif case != "missing":
        depth = {"fewer_layers": 3, "more_layers": 1, "other_width": 1}[case]
        saved = {"fewer_layers": 1, "more_layers": 2, "other_width": 1}[case]
        torch.save(build("mlp", {"depth": saved, "width": 32 if case == "other_width" else 16},
                         MNIST, 10).state_dict(), w)
    r = _run(tmp_path, mnist_dir, f"name: t\nepochs: 1\nweights: w.pt\n"
             f"space: {{depth: {depth}, width: {width}}}\n")
    assert r.exit_code == 2 and phrase in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert _no_study(tmp_path)
    if case == "missing":
        assert str(tmp_path / "w.pt") in r.output.replace("\n", "")


def test_too_many_frozen_blocks_and_a_weights_range_are_refused(
        tmp_path: Path, mnist_dir: Path) -> None:
    r = _run(tmp_path, mnist_dir, "name: t\nepochs: 1\nspace: {depth: 1, freeze: {type: int, "
             "low: 0, high: 3}}\n")
    assert r.exit_code == 2 and "freeze: 3 but this model has 1 blocks" in r.output, r.output
    assert _no_study(tmp_path)
    r = _run(tmp_path, mnist_dir, "name: t\nspace: {weights: {type: int, low: 0, high: 3}}\n")
    assert r.exit_code == 2 and "space.weights: give the path" in r.output, r.output
    (tmp_path / "t.py").write_text("def fit(params, ctx):\n    return 0.0\n")
    r = _run(tmp_path, mnist_dir, "name: t\ntrainer: t.py:fit\ntask: classification\n"
             "space: {weights: [a.pt]}\n")
    assert r.exit_code == 2 and f"no file at {tmp_path / 'a.pt'}" in r.output, r.output
    assert _no_study(tmp_path)


@pytest.mark.slow
def test_a_torchvision_study_fine_tunes_from_a_state_dict(tmp_path: Path, mnist_dir: Path) -> None:
    import torchvision

    # ImageNet-shaped (3 colours, 1000 classes) weights into a grey 4-class model, on 96
    # images of a user loader (a CPU shared by several engineers runs a ResNet slowly)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    (tmp_path / "d.py").write_text(
        "import torch\ndef load():\n    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8, generator=g)\n"
        "    y = torch.arange(96) % 4\n"
        "    return (x[:48], y[:48]), (x[48:72], y[48:72]), (x[72:], y[72:])\n")
    r = _run(tmp_path, mnist_dir, "name: t\nepochs: 1\nmodel: torchvision:resnet18\n"
             "data: d.py:load\nweights: r18.pt\nspace: {freeze: [3, 0], "
             "backbone_lr_scale: 0.1, batch_size: 32}\n")
    assert r.exit_code == 0, r.output
    # retrain starts from the weights too, and its model loads back as a torchvision resnet
    from tuner.results.retrain import load_model

    r = CliRunner().invoke(app, ["retrain", "t", "--device", "cpu", "--out", str(tmp_path / "m"),
                                 "--storage", f"sqlite:///{tmp_path / 't.db'}",
                                 "--data-dir", str(mnist_dir), "--no-download"])
    assert r.exit_code == 0, r.output
    model, card = load_model(tmp_path / "m")
    assert card["model"] == "torchvision:resnet18" and model.fc.out_features == 4
    r = _run(tmp_path, mnist_dir, "name: u\nmodel: torchvision:resnet18\nspace: {freeze: 6}\n")
    assert r.exit_code == 2 and "has 5 blocks before its head" in r.output, r.output


def _tabular(n: int = 64, features: int = 6) -> DataBundle:
    from tuner.data import Split
    from tuner.data._bundle import make_bundle

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g) * 3 + 1
    y = (x[:, 0] > 1).long()
    return make_bundle("t", "classification", Split(x, y), Split(x[:16], y[:16]), None, 2,
                       InputKind.tabular)


def test_a_frozen_blocks_batch_norm_keeps_its_running_statistics() -> None:
    data = _tabular()
    built: list[torch.nn.Module] = []
    bn = {"depth": 2, "width": 8, "batch_norm": True}
    ctx = Context(device=torch.device("cpu"), seed=0, max_epochs=1, data=data,
                  build_model=lambda p: built.append(build("mlp", p, data.inputs, 2)) or built[-1])
    fit({**bn, "lr": 1e-2, "batch_size": 16, "freeze": 1}, ctx)
    model = built[-1]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2
    frozen, free = norms
    # a fresh norm starts at mean 0, var 1; one epoch of train() batches moves the free one only
    assert torch.equal(frozen.running_mean, torch.zeros(8)) and frozen.num_batches_tracked == 0
    assert not torch.equal(free.running_mean, torch.zeros(8)) and free.num_batches_tracked > 0
    model.train()
    assert not frozen.training and free.training
    assert all(not p.requires_grad for p in frozen.parameters())


def test_a_backbone_without_its_head_loads_and_the_trial_says_so(tmp_path: Path) -> None:
    data = _tabular()
    source = build("mlp", {"depth": 1, "width": 8}, data.inputs, 5)  # another task: 5 classes
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("3.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    torch.save(source.state_dict(), tmp_path / "other_head.pt")

    model = build("mlp", {"depth": 1, "width": 8}, data.inputs, 2)
    assert load_weights(model, tmp_path / "backbone.pt") == ["3.weight", "3.bias"]
    assert torch.equal(model.state_dict()["1.weight"], backbone["1.weight"])
    assert model.tuner_weights == ("backbone.pt: 2 of 4 tensors loaded; head left as built "
                                   "(3.weight, 3.bias: missing from the file)")
    assert load_weights(model, tmp_path / "other_head.pt") == ["3.weight", "3.bias"]
    assert "(3.weight, 3.bias: of another shape)" in model.tuner_weights

    # through the training loop: the note lands in the trial's info
    ctx = _ctx(data, 1, tmp_path)
    fit({"depth": 1, "width": 8, "lr": 1e-3, "weights": "backbone.pt"}, ctx)
    assert ctx.info["weights"].startswith("backbone.pt: 2 of 4 tensors loaded; head left")

    # a file without a hidden layer's weights is still refused, naming the key
    del backbone["1.bias"]
    torch.save(backbone, tmp_path / "broken.pt")
    with pytest.raises(UserCodeError, match=r"lacks '1.bias' \(and 0 more keys\)"):
        load_weights(model, tmp_path / "broken.pt")
