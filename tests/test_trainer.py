"""The trainer on every data kind, resume to identical weights, DDP under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from support.arrays import make_arrays  # noqa: E402

from hepascope.train.augment import Augment  # noqa: E402
from hepascope.train.checkpoint import load_checkpoint  # noqa: E402
from hepascope.train.samples import ArrayDataset, BalancedSampler  # noqa: E402
from hepascope.train.trainer import TrainConfig, predict, train  # noqa: E402

SMALL = {"resnet18": (("width", 8),), "c3d": (("channels", (8, 16, 32, 32)), ("hidden", 32)),
         "bimodal_resnet18_lite": (("width", 8), ("ceus_width", 8))}


@pytest.mark.parametrize("model", sorted(SMALL))
def test_train_each_kind(model: str, tmp_path: Path) -> None:
    data = make_arrays()
    cfg = TrainConfig(model=model, epochs=2, batch_size=8, num_threads=2, device="cpu",
                      model_args=SMALL[model])
    res = train(data, cfg, tmp_path, progress=False)
    assert res.epochs_run == 2 and len(res.history) == 2
    net, meta = load_checkpoint(tmp_path)
    assert meta["labels"] == ["a", "b"] and meta["kind"] in ("image", "clip", "bimodal")
    tr, va = meta["train"]["n_train_patients"], meta["train"]["n_val_patients"]
    assert tr + va == 8 and va >= 1
    _, p = predict(net, ArrayDataset(data, np.arange(len(data)), meta["kind"]))
    assert p.shape == (len(data), 2) and np.allclose(p.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("ema_span", [0.0, 0.3])
def test_resume_reaches_the_same_weights(tmp_path: Path, ema_span: float) -> None:
    data = make_arrays()
    cfg = TrainConfig(model="resnet18", epochs=3, batch_size=8, num_threads=1, device="cpu",
                      model_args=SMALL["resnet18"], patience=5, ema_span=ema_span)
    whole = train(data, cfg, tmp_path / "whole", progress=False)
    part = train(data, cfg, tmp_path / "split", progress=False, stop_after=1)
    assert part.stopped == "paused" and part.epochs_run == 1
    rest = train(data, cfg, tmp_path / "split", progress=False, resume=True)
    assert rest.epochs_run == 3
    assert rest.weights_sha256 == whole.weights_sha256
    a = json.loads((tmp_path / "whole" / "model.json").read_text())["train"]["history"]
    b = json.loads((tmp_path / "split" / "model.json").read_text())["train"]["history"]
    assert [h["val_loss"] for h in a] == [h["val_loss"] for h in b]
    # the kept (validated, saved) weights too: with a weight average, the average's
    kept = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("whole", "split")]
    assert kept[0] == kept[1]


def test_weight_average_is_an_ema_of_every_step() -> None:
    from hepascope.train.steps import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(net, span=4.0)
    w0, expect = net[0].weight.detach().clone(), net[0].weight.detach().clone()
    for k in range(1, 30):
        with torch.no_grad():
            net[0].weight.copy_(w0 + k)
            net[1].num_batches_tracked.fill_(k)
        avg.update(net)
        d = min(0.75, (1 + k) / (10 + k))  # warm-up: early steps weigh in faster
        expect = d * expect + (1 - d) * (w0 + k)
    assert torch.allclose(avg.module[0].weight, expect)
    assert int(avg.module[1].num_batches_tracked) == 29  # integer buffers are copied
    assert not avg.module[0].weight.requires_grad
    with pytest.raises(ValueError, match="span"):
        WeightAverage(net, span=0.5)


def test_weight_average_is_what_is_kept(tmp_path: Path) -> None:
    """With ``ema_span`` the saved weights are the average, not the last step's."""
    data = make_arrays()
    base = dict(model="resnet18", epochs=2, batch_size=8, num_threads=1, device="cpu",
                model_args=SMALL["resnet18"], patience=5)
    plain = train(data, TrainConfig(**base), tmp_path / "plain", progress=False)
    avg = train(data, TrainConfig(**base, ema_span=0.5), tmp_path / "avg", progress=False)
    assert plain.weights_sha256 == avg.weights_sha256  # the same optimisation...
    files = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("plain", "avg")]
    assert files[0] != files[1]  # ...but another model kept
    with pytest.raises(ValueError, match="ema_span"):
        TrainConfig(ema_span=1.5)


def test_balanced_sampler_shards_are_disjoint_and_balanced() -> None:
    labels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    shards = [list(BalancedSampler(labels, 4, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 15
    both = shards[0] + shards[1]
    counts = np.bincount(labels[both], minlength=3)
    assert counts.tolist() == [10, 10, 10]
    assert len(set(shards[0]) & set(shards[1])) <= 3  # only the cycled minority repeats


def test_augment_keeps_views_registered_and_in_range() -> None:
    data = make_arrays(n_patients=2, per_patient=1)
    aug = Augment(max_shift=0.1, rotate_deg=10)
    ds = ArrayDataset(data, [0, 1], "bimodal", augment=aug, seed=1)
    (bm, ce), _ = ds[0]
    black, white = -2.0, 2.0
    assert bm.shape == (1, 32, 32) and ce.shape == (4, 1, 16, 16)
    assert float(bm.min()) >= black - 1e-6 and float(bm.max()) <= white + 1e-6
    plain = ArrayDataset(data, [0, 1], "bimodal")[0][0][0]
    assert not torch.equal(bm, plain)  # something changed...
    # ...but not the speckle statistics: no blur, so neighbouring-pixel contrast survives
    def roughness(x: torch.Tensor) -> float:
        return float((x[..., 1:] - x[..., :-1]).abs().mean())
    assert roughness(bm) > 0.5 * roughness(plain)


def test_ddp_two_cpu_ranks_train_identical_weights(tmp_path: Path) -> None:
    script = Path(__file__).parent / "support" / "ddp_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    digests = [(tmp_path / f"rank{r}.sha256").read_text().strip() for r in range(2)]
    assert digests[0] == digests[1] and len(digests[0]) == 64
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["train"]["world_size"] == 2
    assert meta["train"]["final_weights_sha256"] == digests[0]


@pytest.mark.parametrize("select_after, best, ran", [(0.0, 1, 2), (0.5, 4, 5)])
def test_an_early_validation_peak_is_not_kept_after_select_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, select_after: float, best: int,
        ran: int) -> None:
    """Validation that peaks by chance in epoch 1 (scripted from outside the trainer): with
    ``select_after`` 0 that epoch is kept and the run stops a patience later; with 0.5
    nothing stops before epoch 3 of 6, where selection starts again: the best of the later
    epochs is kept and the run stops a patience after it."""
    import hepascope.train.trainer as trainer

    scores = iter([0.9, 0.5, 0.6, 0.8, 0.7, 0.6])

    def scripted(*args: object, **kwargs: object) -> dict[str, object]:
        s = next(scores)
        return {"loss": 1.0 - s, "accuracy": s, "macro_f1": s, "sensitivity": {"a": s, "b": s},
                "specificity": {"a": s, "b": s}, "confusion": [[1, 0], [0, 1]], "n_samples": 2}

    monkeypatch.setattr(trainer, "evaluate", scripted)
    cfg = TrainConfig(model="resnet18", epochs=6, batch_size=8, num_threads=1, device="cpu",
                      model_args=SMALL["resnet18"], patience=1, select_after=select_after)
    res = train(make_arrays(), cfg, tmp_path, progress=False)
    assert (res.best_epoch, res.epochs_run, res.stopped) == (best, ran, "early")
    with pytest.raises(ValueError, match="select_after"):
        TrainConfig(select_after=1.0)


def test_restore_prior_gives_the_saved_logits_the_training_class_shares(tmp_path: Path) -> None:
    """Balanced sampling on a 2:1 learning part: with ``restore_prior`` the saved model's
    logits are the same run's plus the log class shares (centred); training itself, and so
    the final weights, are untouched."""
    data = make_arrays(n_patients=10)  # patient p has class p % 2, 3 samples each
    rows = {p: np.arange(3 * p, 3 * p + 3) for p in range(10)}
    tr = np.concatenate([rows[p] for p in (0, 2, 4, 6, 1, 3)])  # 12 of a, 6 of b
    va = np.concatenate([rows[8], rows[5]])
    logits, digests = [], []
    for restore in (False, True):
        cfg = TrainConfig(model="resnet18", epochs=2, batch_size=8, num_threads=1,
                          device="cpu", model_args=SMALL["resnet18"], restore_prior=restore)
        res = train(data, cfg, tmp_path / str(restore), train_idx=tr, val_idx=va,
                    progress=False)
        net, meta = load_checkpoint(tmp_path / str(restore))
        with torch.no_grad():
            logits.append(net.eval()(torch.from_numpy(data.bmode.astype(np.float32))).numpy())
        digests.append(res.weights_sha256)
    share = np.log(np.array([12.0, 6.0]) / 18)
    assert meta["train"]["logit_shift"] == pytest.approx(share - share.mean())
    assert np.allclose(logits[1] - logits[0], share - share.mean(), atol=1e-5)
    assert digests[0] == digests[1]
