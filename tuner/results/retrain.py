"""After the search: retrain one trial's configuration on train+val, test it once on the
held-out test split, and keep the model.

The trial is retrained with its own seed for the epochs it ran, so the same trial retrained
twice on a CPU gives the same test score. The result lands in a folder::

    model.pt     the weights: ``model.load_state_dict(torch.load(p, weights_only=True))``
    model.json   the model card: study, trial, params, test metrics, data, seed, epochs,
                 input normalisation, library versions, file names

and in the study, as the user attr ``retrain.<trial>`` (``tuner best`` shows it).

A study with its own ``trainer:`` is retrained by calling that trainer with ``ctx.data`` =
train+val / test and no pruning; its weights are kept when it saves checkpoints
(``ctx.save_checkpoint({"model": model.state_dict(), ...})``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from tuner import schedules, storage
from tuner.config import Fixed, StudySpec
from tuner.errors import DataError, SpecError, TunerError, UserCodeError
from tuner.gate import inside_folder, writable_folder
from tuner.settings import Settings
from tuner.study import Handle, pareto_front, primary_value
from tuner.trial_schema import EPOCHS_ATTR, SEED_ATTR, VERSIONS_ATTR

if TYPE_CHECKING:
    from torch import nn

    from tuner.training.assets import StudyAssets
    from tuner.training.context import Context

WEIGHTS = "model.pt"
CARD = "model.json"
_USER_CKPT = ".retrain-checkpoint.pt"


@dataclass(frozen=True)
class Retrained:
    study: str
    trial: int
    metrics: dict[str, float | None]  # on the test split, plus the last epoch's train_loss
    folder: Path
    weights: Path | None  # None when a user trainer saved no checkpoint
    card: Path
    epochs: int
    seed: int
    train_samples: int
    test_samples: int


def attr_name(trial: int) -> str:
    """The study user attr holding the retrain of ``trial``."""
    return f"retrain.{trial}"


def retrained_of(handle: Handle, trial: int) -> dict[str, Any] | None:
    """What the retrain of ``trial`` recorded in the study, if it was retrained."""
    return handle.study.user_attrs.get(attr_name(trial))


def default_folder(study: str, trial: int) -> Path:
    return inside_folder("runs", study) / f"trial-{trial}"


def pick_trial(handle: Handle, number: int | None = None,
               prefer: str | None = None) -> FrozenTrial:
    """Trial ``number``, or the best completed trial; it must be COMPLETE. In a
    multi-objective study, the member of the Pareto front best at ``prefer`` (default: the
    metric the loop reports)."""
    name, spec = handle.name, handle.spec
    if prefer is not None and prefer not in spec.objective_names:
        raise SpecError(f"--prefer {prefer}: not an objective of study {name!r}; use one of "
                        f"{', '.join(spec.objective_names)}")
    if number is None:
        front = pareto_front(handle)
        if not front:
            raise TunerError(f"study {name!r} has no completed trial to retrain (infeasible "
                             f"ones do not count); run `tuner resume {name}` first")
        i = spec.objective_names.index(prefer or spec.metric_name)
        pick = max if spec.directions[i] == "maximize" else min
        return pick(front, key=lambda t: t.values[i])  # ties: the earliest trial
    by_number = {t.number: t for t in handle.study.get_trials(deepcopy=False)}
    if number not in by_number:
        raise TunerError(f"study {name!r} has no trial {number}; `tuner trials {name}` lists them")
    t = by_number[number]
    if t.state != TrialState.COMPLETE:
        raise TunerError(f"trial {number} of {name} is {t.state.name}, not COMPLETE; pick a "
                         f"completed one (`tuner trials {name}`), or drop --trial for the best")
    return t


def trial_params(spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
    """What the training loop got: the study's constants plus the trial's sampled params."""
    fixed = {k: p.value for k, p in spec.space.items() if isinstance(p, Fixed)}
    return {**fixed, **trial.params}


def retrain(handle: Handle, settings: Settings, *, trial: int | None = None,
            folder: str | Path | None = None) -> Retrained:
    """Retrain ``trial`` (default: the best) on train+val and evaluate it once on the test
    split; write the weights and model card into ``folder`` and record the result in the
    study. Deterministic for a given trial on a CPU."""
    import torch

    from tuner.training.assets import StudyAssets
    from tuner.trials import contexts

    spec = handle.spec
    t = pick_trial(handle, trial)
    if spec.data is None:
        raise DataError(
            f"retrain needs the study's data, and study {handle.name!r} has none (its trainer "
            "brings its own); add data: to the study file, or retrain in your own code with "
            f"the params of `tuner best {handle.name} --json`"
        )
    assets = StudyAssets(spec, device=settings.device, data_dir=settings.data_dir,
                         download=settings.download)
    final = assets.data().final()  # train+val to train on, the test split as "val"
    epochs = int(t.user_attrs.get(EPOCHS_ATTR) or 0) or spec.epochs
    seed = int(t.user_attrs.get(SEED_ATTR, spec.seed + storage.lineage(t)))
    params = trial_params(spec, t)
    segments: list[tuple[int, dict[str, Any]]] = []
    # PBT: replay the schedule of the member's weights
    if (plan := schedules.of(spec).segments(t)) is not None:
        fixed = {k: p.value for k, p in spec.space.items() if isinstance(p, Fixed)}
        segments = [(int(s["from_epoch"]), {**fixed, **s["params"]}) for s in plan]
        params = segments[0][1]
        seed = spec.seed + int(plan[0].get("lineage", storage.lineage(t)))
        if spec.trainer is not None and len(segments) > 1:
            raise TunerError(f"trial {t.number}'s hyperparameters change at epochs "
                             f"{', '.join(str(e) for e, _ in segments[1:])} (PBT), and the "
                             "study's own trainer cannot be told to switch them; retrain it "
                             "in your own code with the schedule in `tuner trials --format json`")
    if final.text is not None:  # text: the trial's tokenization, trained on train+val
        from tuner.data._text import for_params

        final = for_params(final, params)
    out = Path(folder) if folder is not None else default_folder(handle.name, t.number)
    writable_folder(out, "--out")  # before the training, whose result it keeps
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunerError(f"cannot create {out}: {e.strerror}; pick another --out") from None
    ctx = contexts.build(assets, final, seed=seed, max_epochs=epochs, trial_number=t.number)
    start = time.perf_counter()
    metrics, state = _fit(assets, params, ctx, out, t.number, segments)
    wall = time.perf_counter() - start
    metrics = {k: _finite(v) for k, v in metrics.items()}
    weights: Path | None = out / WEIGHTS
    if isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values()):
        torch.save({k: v.detach().cpu() for k, v in state.items()}, weights)
    else:  # a user trainer that keeps no checkpoint: no weights, and none left from before
        weights.unlink(missing_ok=True)
        weights = None
    card = out / CARD
    card_data = _card(handle, t, params, metrics, final, epochs, seed, settings.device, weights,
                      wall)
    if final.text is not None:  # the tokenizer beside the model: the card classifies text
        card_data["text"] = final.text.save(out)
        card_data["files"]["tokenizer"] = card_data["text"]["tokenizer"]
    if len(segments) > 1:
        card_data["schedule"] = [{"from_epoch": e, "params": p} for e, p in segments]
    card.write_text(json.dumps(card_data, indent=2) + "\n",
                    encoding="utf-8")
    n_train, n_test = len(final.train), len(final.split("val"))
    handle.study.set_user_attr(attr_name(t.number), {
        "metrics": metrics, "out": str(out.resolve()),
        "weights": weights.name if weights else None, "card": CARD, "epochs": epochs,
        "seed": seed, "device": settings.device, "data": spec.data, "train_samples": n_train,
        "test_samples": n_test, "wall_time_s": round(wall, 3), "created": _now(),
    })
    return Retrained(handle.name, t.number, metrics, out, weights, card, epochs, seed,
                     n_train, n_test)


def _fit(assets: StudyAssets, params: dict[str, Any], ctx: Context, out: Path, number: int,
         segments: list[tuple[int, dict[str, Any]]] | None = None
         ) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
    """Train with tuner's loop or the study's trainer: (test metrics, model state_dict)."""
    from tuner.training.context import CheckpointStore, TrialPruned

    if assets.trainer is None:
        from tuner.training import train

        model, metrics = train.fit_final(params, ctx, segments or ())
        return metrics, model.state_dict()
    # the user's loop hands its weights over through the checkpoint it saves each epoch
    spec = assets.spec
    ctx.checkpoints = CheckpointStore(out / _USER_CKPT)
    ctx.checkpoints.delete()
    try:
        value = float(assets.trainer(params, ctx))
        saved = ctx.checkpoints.load()
    except TrialPruned as e:
        raise TunerError(f"retraining trial {number} diverged ({e}); retrain another trial "
                         "with --trial N") from None
    except Exception as e:
        raise UserCodeError(f"trainer: {spec.trainer} raised {type(e).__name__}: {e}"
                            .splitlines()[0]) from None
    finally:
        ctx.checkpoints.delete()
    losses = [h["train_loss"] for h in ctx.history if "train_loss" in h]
    metrics = {spec.metric_name: value, **({"train_loss": losses[-1]} if losses else {})}
    return metrics, (saved or {}).get("model")


def load_model(folder: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The retrained model in ``folder`` (weights loaded, eval mode) and its model card.
    Inputs must be normalised as the card's ``normalization`` says."""
    import torch

    from tuner import models, usercode
    from tuner.kinds import InputKind, Inputs

    folder = Path(folder)
    try:
        card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunerError(f"no {CARD} in {folder}; point at a folder written by "
                         "`tuner retrain`") from None
    if not card["files"].get("weights"):
        raise TunerError(f"{folder} holds no weights (its trainer saved no checkpoint)")
    shape, outputs, params = tuple(card["input_shape"]), card["num_outputs"], card["params"]
    family = models.family_of(card["model"])
    if family is None:
        build = usercode.resolve(card["model"], "model", card.get("base_dir"))
        model = build(dict(params), shape, outputs)
    else:
        kind = InputKind(card.get("input_kind") or _legacy_kind(shape))
        try:  # a pretrained family's folder, found again from the card's base_dir
            name = models.resolved(card["model"], card.get("base_dir"))
        except ValueError as e:
            raise TunerError(str(e)) from None
        text = card.get("text") or {}
        if "vocab_size" in text and "vocab_size" in models.get(family).knobs:
            params = {"vocab_size": text["vocab_size"], **params}
        model = models.build(name, params, Inputs(kind, shape), outputs)
    state = torch.load(folder / card["files"]["weights"], map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), card


def classify_text(folder: str | Path, texts: list[str], device: str = "cpu") -> list[str]:
    """The class of each text, by the model ``tuner retrain`` wrote into ``folder`` for a
    study on text data (its tokenizer is saved beside it)."""
    import torch

    from tuner.data._text import encode

    model, card = load_model(folder, device)
    text = card.get("text")
    if not text:
        raise TunerError(f"{folder}: the model was not trained on text data (no tokenizer in "
                         "its card); classify its own kind of input with load_model")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / text["tokenizer"]))
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(texts), 256):
            x = encode(tok, texts[start:start + 256], int(text["max_len"]),
                       special=bool(text.get("special_tokens")))
            out += [text["classes"][i] for i in model(x.to(device)).argmax(1).tolist()]
    return out


def _legacy_kind(shape: tuple[int, ...]) -> str:
    """Cards written before they named the input kind: images or tabular rows."""
    return "image" if len(shape) == 3 else "tabular"


def _card(handle: Handle, t: FrozenTrial, params: dict[str, Any], metrics: dict[str, Any],
          final: Any, epochs: int, seed: int, device: str, weights: Path | None,
          wall: float) -> dict[str, Any]:
    import torch

    from tuner.trials import versions

    spec = handle.spec
    images = final.train.dtype == torch.uint8
    return {
        "study": handle.name,
        "trial": t.number,
        "metric": spec.metric_name,
        "direction": spec.direction_name,
        # the reported metric's value (a multi-objective trial has one per objective)
        "validation_value": primary_value(spec, t),
        **({"validation_values": dict(zip(spec.objective_names, t.values, strict=True))}
           if spec.multi_objective and t.values else {}),
        "test_metrics": metrics,
        "params": params,
        "data": spec.data,
        "task": final.task,
        "model": spec.model,
        "trainer": spec.trainer,
        "base_dir": spec.base_dir,
        "input_kind": str(final.kind),
        "input_shape": list(final.input_shape),
        "num_outputs": final.num_outputs,
        "train_samples": len(final.train),
        "test_samples": len(final.split("val")),
        "epochs": epochs,
        "seed": seed,
        "device": device,
        "wall_time_s": round(wall, 3),
        # what the model expects: x' = (x * scale - mean) / std, per channel or feature;
        # a regression model predicts (y - y_mean) / y_std
        "normalization": {
            "scale": 1 / 255 if images else 1.0,
            "mean": final.mean.flatten().tolist(),
            "std": final.std.flatten().tolist(),
            **({"y_mean": final.y_mean, "y_std": final.y_std} if final.task == "regression"
               else {}),
        },
        "versions": versions(),
        "trial_versions": t.user_attrs.get(VERSIONS_ATTR),
        "files": {"weights": weights.name if weights else None, "card": CARD},
        "created": _now(),
    }


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
