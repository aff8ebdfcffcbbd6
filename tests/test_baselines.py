"""TempCNN, L-TAE, the pooled CNN variant, Random Forest and the small training loop; accuracy
checks on synthetic tasks each model must learn and on the Mato Grosso samples."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agrifm.models.baselines import (
    LTAE,
    LTAE_RECIPE,
    TEMPCNN_RECIPE,
    PooledTemporalCNN,
    RandomForestBaseline,
    TempCNN,
    day_positions,
)
from agrifm.tasks.baseline_training import predict_logits, train_torch_classifier

BANDS = ["MIR", "BLUE", "NIR", "RED", "EVI", "NDVI"]


def _toy(n: int = 64, t: int = 8, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two separable classes: class 1 has a bump in the middle of the season."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.3, (n, t, c)).astype(np.float32)
    x[y == 1, t // 3 : 2 * t // 3] += 1.5
    return x, y


def test_pooled_temporal_cnn_shapes() -> None:
    model = PooledTemporalCNN(6, 9, hidden=16).eval()
    assert model(torch.randn(4, 23, 6)).shape == (4, 9)
    assert model(torch.randn(4, 23, 6, 1, 1)).shape == (4, 9)
    assert model(torch.randn(4, 11, 6)).shape == (4, 9)  # independent of T
    with pytest.raises(ValueError, match=r"\(4, 23, 5\)"):
        model(torch.randn(4, 23, 5))


def test_random_forest_with_gaps() -> None:
    x, y = _toy()
    x[::5, 2, 1] = np.nan
    x[3, :, 0] = np.nan  # a whole series missing -> training band mean
    rf = RandomForestBaseline(n_estimators=5, seed=0, n_jobs=1).fit(x, y)
    np.testing.assert_allclose(rf._features(x[3:4]).reshape(8, 3)[:, 0], rf.band_mean_[0])
    np.testing.assert_allclose(rf._features(x[5:6]).reshape(8, 3)[2, 1], (x[5, 1, 1] + x[5, 3, 1]) / 2, rtol=1e-5)
    y[:4] = -1  # ignored labels are dropped
    rf = RandomForestBaseline(n_estimators=20, seed=0, n_jobs=1).fit(x, y)
    assert set(rf.classes_) == {0, 1}
    assert (rf.predict(x[4:]) == y[4:]).mean() > 0.9
    proba = rf.predict_proba(x)
    assert proba.shape == (64, 2) and np.allclose(proba.sum(1), 1)
    with pytest.raises(ValueError, match=r"\(T, C\)"):
        rf.predict(x[:, :5])
    with pytest.raises(RuntimeError, match="not fitted"):
        RandomForestBaseline().predict(x)


def test_training_is_deterministic_and_keeps_global_rng() -> None:
    x, y = _toy()
    kw = dict(epochs=3, batch_size=16, lr=1e-2, weight_decay=0.0, seed=3, augment_noise=0.1, progress=False)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = PooledTemporalCNN(3, 2, hidden=8)
        before = torch.get_rng_state()
        train_torch_classifier(model, x, y, val=(x, y), **kw)
        assert torch.equal(before, torch.get_rng_state())
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    assert not model.training


class _NaNAfter(nn.Module):
    """Returns NaN logits from the ``n``-th call on, to exercise the NaN-loss guard."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin, self.calls, self.n = nn.Linear(3, 2), 0, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.lin(x.mean(1))
        return out * float("nan") if self.calls > self.n else out


def test_nan_loss_and_bad_inputs_raise() -> None:
    x, y = _toy(n=40)
    kw = dict(epochs=2, batch_size=16, lr=1e-3, weight_decay=0.0, seed=0, progress=False)
    with pytest.raises(FloatingPointError, match="epoch 1, batch 1"):
        train_torch_classifier(_NaNAfter(4), x, y, **kw)  # 3 batches/epoch: 5th call = epoch 1, batch 1
    x[5, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf \(first samples \[5\]\)"):
        train_torch_classifier(PooledTemporalCNN(3, 2), x, y, **kw)
    with pytest.raises(ValueError, match="40 samples but y has 39"):
        train_torch_classifier(PooledTemporalCNN(3, 2), x, y[:-1], **kw)


@lru_cache(maxsize=1)
def _mato_grosso(csv: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Long CSV -> X (N, 23, 6) in BANDS order, y (N,) indices into sorted class names."""
    import pandas as pd

    df = pd.read_csv(csv).sort_values(["sample_id", "date"])
    counts = df.groupby("sample_id").size()
    assert (counts == 23).all(), f"{csv}: samples with != 23 dates: {counts[counts != 23].index[:5].tolist()}"
    x = df[BANDS].to_numpy(np.float32).reshape(len(counts), 23, len(BANDS))
    labels = df.groupby("sample_id", sort=True)["label"].first()
    names = sorted(labels.unique())
    return x, labels.map({n: i for i, n in enumerate(names)}).to_numpy(np.int64), names


@pytest.fixture
def mato_grosso_split(demo_data_dir: Path) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    from conftest import need

    x, y, names = _mato_grosso(need(demo_data_dir / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv"))
    assert x.shape == (1327, 23, 6) and len(names) == 9
    return tuple(train_test_split(x, y, test_size=0.25, random_state=0, stratify=y))


def test_random_forest_mato_grosso(mato_grosso_split: tuple[np.ndarray, ...]) -> None:
    x_tr, x_te, y_tr, y_te = mato_grosso_split
    rf = RandomForestBaseline(n_estimators=50, seed=0, n_jobs=2).fit(x_tr, y_tr)
    assert (rf.predict(x_te) == y_te).mean() > 0.8


@pytest.mark.parametrize("name", ["tempcnn", "pooled", "ltae"])
def test_torch_baselines_mato_grosso(mato_grosso_split: tuple[np.ndarray, ...], name: str) -> None:
    x_tr, x_te, y_tr, y_te = mato_grosso_split
    mean, std = x_tr.mean(axis=(0, 1)), x_tr.std(axis=(0, 1))
    torch.manual_seed(0)
    model = {"tempcnn": lambda: TempCNN(len(BANDS), 9, frames=23), "pooled": lambda: PooledTemporalCNN(len(BANDS), 9, hidden=32),
             "ltae": lambda: LTAE(len(BANDS), 9)}[name]()
    days = np.tile(np.arange(23, dtype=np.float32) * 16, (len(x_tr), 1))  # MOD13Q1: 16-day composites
    kw = dict(days=days) if name == "ltae" else {}
    train_torch_classifier(model, (x_tr - mean) / std, y_tr, epochs=10, batch_size=64, lr=3e-3, weight_decay=1e-4,
                           seed=0, progress=False, **kw)
    kw = dict(days=days[: len(x_te)]) if name == "ltae" else {}
    oa = (predict_logits(model, (x_te - mean) / std, **kw).argmax(1).numpy() == y_te).mean()
    assert oa > 0.8


def test_balanced_weights_favour_rare_classes_and_keep_the_mean_sample_weight() -> None:
    from agrifm.tasks.pointfit import balanced_weights

    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    assert balanced_weights(labels, 4, 0.0) is None
    w = np.array(balanced_weights(labels, 4, 0.5))
    assert w[2] > w[1] > w[0]
    np.testing.assert_allclose(w[:3] ** -2 / (w[:3] ** -2).sum(), [0.9, 0.09, 0.01], rtol=1e-6)  # ∝ count^-0.5
    counts = np.bincount(labels, minlength=4)
    assert (w * counts).sum() / counts.sum() == pytest.approx(1.0)  # the loss scale stays that of plain CE
    full = np.array(balanced_weights(labels, 4, 1.0))
    assert full[0] * 90 == pytest.approx(full[2] * 1)  # every class weighs the same in total


def test_classification_task_rejects_class_weights_of_the_wrong_length_and_a_zero_learning_rate() -> None:
    from agrifm.tasks.classification import ClassificationTask

    with pytest.raises(ValueError, match="class_weights has 2 values for 3 classes"):
        ClassificationTask(model={"preset": "point-small", "embed_dim": 8, "num_heads": [1, 1, 1, 1]},
                           sources={"NDVI": {"bands": ["NDVI"], "resolution_m": 250.0, "units": "index", "mean": [0.5], "std": [0.2]}},
                           class_names=["a", "b", "c"], class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="lr 0.0: expected a learning rate above 0"):  # not a division by zero later
        ClassificationTask(model={"preset": "point-small", "embed_dim": 8, "num_heads": [1, 1, 1, 1]},
                           sources={"NDVI": {"bands": ["NDVI"], "resolution_m": 250.0, "units": "index", "mean": [0.5], "std": [0.2]}},
                           class_names=["a", "b", "c"], lr=0.0)


def test_prior_logit_bias_undoes_the_class_weights_at_the_weighted_loss_optimum() -> None:
    """Free logits trained with balanced weights, plus the bias, give back the true posterior."""
    from agrifm.tasks.pointfit import balanced_weights, prior_logit_bias

    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    posterior = torch.tensor([0.5, 0.3, 0.2])  # p(c|x) at one input
    for power in (0.5, 1.0):
        w = torch.tensor(balanced_weights(labels, 3, power))
        z = torch.zeros(3, requires_grad=True)
        opt = torch.optim.LBFGS([z], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

        def loss():
            opt.zero_grad()
            val = -(posterior * w * torch.log_softmax(z, 0)).sum()
            val.backward()
            return val

        opt.step(loss)
        shifted = torch.softmax(z.detach(), 0)
        assert shifted[2] > posterior[2]  # the weights push towards the rare class ...
        restored = torch.softmax(z.detach() + torch.tensor(prior_logit_bias(labels, 3, power)), 0)
        torch.testing.assert_close(restored, posterior, atol=1e-4, rtol=0)  # ... the bias brings it back


def test_add_logit_bias_changes_the_decision_and_checks_the_class_count() -> None:
    from agrifm.tasks.classification import ClassificationTask

    task = ClassificationTask(model={"preset": "point-small", "embed_dim": 8, "num_heads": [1, 1, 1, 1]},
                              sources={"NDVI": {"bands": ["NDVI"], "resolution_m": 250.0, "units": "index", "mean": [0.5], "std": [0.2]}},
                              class_names=["a", "b", "c"]).eval()
    batch = {"inputs": {"NDVI": torch.randn(4, 8, 1, 1, 1)}, "dates": {"NDVI": torch.arange(8).repeat(4, 1) * 16 + 19000}}
    task.add_logit_bias([0.0, 50.0, 0.0])
    assert (task.predict_step(batch, 0).argmax(1) == 1).all()
    with pytest.raises(ValueError, match="logit bias has 2 values for 3 classes"):
        task.add_logit_bias([1.0, 2.0])


def _fit_predict(model: nn.Module, x: np.ndarray, y: np.ndarray, x_te: np.ndarray, *, epochs: int = 30, days=None,
                 days_te=None, **kw) -> np.ndarray:
    train_torch_classifier(model, x, y, epochs=epochs, batch_size=32, lr=2e-3, weight_decay=0.0, seed=0, progress=False,
                           days=days, **kw)
    return predict_logits(model, x_te, days=days_te).argmax(1).numpy()


def test_tempcnn_is_the_published_architecture_and_learns_a_synthetic_task() -> None:
    model = TempCNN(3, 4, frames=8)
    convs = [m for m in model.encoder if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (5,))] * 3
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2] * 4
    dense = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(64 * 8, 256), (256, 4)]  # flatten, FC 256, softmax layer
    assert model.eval()(torch.randn(5, 8, 3, 1, 1)).shape == (5, 4)
    with pytest.raises(ValueError, match="built for 8 frames"):
        model(torch.randn(5, 9, 3))
    assert TEMPCNN_RECIPE["optimizer"] == "adam" and TEMPCNN_RECIPE["batch_size"] == 32

    x, y = _toy(n=128, seed=1)
    x_te, y_te = _toy(n=128, seed=2)
    torch.manual_seed(0)
    assert (_fit_predict(TempCNN(3, 2, frames=8), x, y, x_te, epochs=8) == y_te).mean() > 0.95
    torch.manual_seed(0)
    untrained = predict_logits(TempCNN(3, 2, frames=8), x_te).argmax(1).numpy()
    assert (untrained == y_te).mean() < 0.8  # the task is not solved without training


def _dated_toy(n: int, seed: int, t: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Only the acquisition dates tell the classes apart: every series has the same bump at frame 6
    (values identical in distribution), but class 1's dates run 120 days later than class 0's."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    days = np.sort(rng.uniform(0, 200, (n, t)), axis=1) + 120.0 * y[:, None]
    x = rng.normal(0, 0.3, (n, t, 2)).astype(np.float32)
    x[:, 6] += 2.0
    return x, y, days.astype(np.float32)


def test_ltae_uses_the_acquisition_dates() -> None:
    x, y, days = _dated_toy(256, seed=3)
    x_te, y_te, days_te = _dated_toy(256, seed=4)
    small = dict(n_head=4, d_k=8, d_model=64, mlp=(64, 32), decoder=(16,))  # the paper's structure, narrower: fast
    torch.manual_seed(0)
    dated = _fit_predict(LTAE(2, 2, **small), x, y, x_te, epochs=20, days=days, days_te=days_te)
    assert (dated == y_te).mean() > 0.9
    torch.manual_seed(0)
    blind = _fit_predict(LTAE(2, 2, **small), x, y, x_te, epochs=20)  # frame-index positions only: chance
    assert (blind == y_te).mean() < 0.7


def test_ltae_paper_defaults_and_mask() -> None:
    model = LTAE(6, 5).eval()
    assert (model.n_head, model.d_k, model.d_model, model.period) == (16, 8, 256, 1000.0)
    assert [m.out_features for m in model.mlp if isinstance(m, nn.Linear)] == [128]
    assert [m.out_features for m in model.decoder if isinstance(m, nn.Linear)] == [64, 32, 5]
    assert LTAE_RECIPE["batch_size"] == 128 and LTAE_RECIPE["lr"] == 1e-3
    x, days = torch.randn(3, 10, 6), torch.arange(10.0).repeat(3, 1) * 10
    mask = torch.arange(10)[None, :] < torch.tensor([4, 10, 7])[:, None]
    out = model(x, days, mask)
    x2 = x.clone()
    x2[0, 4:] = 100.0  # values past a series' end do not matter
    x2[2, 7:] = -50.0
    torch.testing.assert_close(model(x2, days, mask), out)
    assert not torch.allclose(model(x2, days), out)  # ... unless unmasked
    _, attn = model(x, days, mask, return_attention=True)
    assert attn.shape == (3, 16, 10) and float(attn[0, :, 4:].detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="days must be"):
        model(x, days[:, :5])


def test_day_positions_count_days_from_the_first_year() -> None:
    dates = np.array([["2020-01-01", "2020-02-01", "2021-01-01"], ["2019-12-30", "NaT", "NaT"]], dtype="datetime64[D]")
    np.testing.assert_array_equal(day_positions(dates), [[0, 31, 366], [363, 363, 363]])


class _Recorder(nn.Module):
    """Logs the frames each training call keeps (the mask's row sums) and whether the tail is held."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.kept, self.held = nn.Linear(1, 2), [], []

    def forward(self, x: torch.Tensor, days=None, mask=None) -> torch.Tensor:
        k = x.shape[1] if mask is None else int(mask[0].sum())
        self.kept.append(k)
        self.held.append(bool((x[:, k:] == x[:, k - 1 : k]).all()) if k < x.shape[1] else True)
        return self.lin(x.mean(1))


def test_truncation_augmentation_cuts_a_share_of_batches_like_agrifm() -> None:
    """Early-season training as AgriFM's variable-length mode: a ``random_truncation`` share of
    the batches is cut at a random frame (at least ``min_fraction`` of the season), the rest held
    at the last kept value (what ``fill_series`` gives a cut series) and masked."""
    from agrifm.tasks.baseline_training import _truncate_batch

    x = torch.arange(6.0).reshape(1, 6, 1)
    cut, lengths = _truncate_batch(x, torch.tensor([6]), torch.Generator().manual_seed(1), 0.25)
    k = int(lengths[0])
    assert 2 <= k <= 6 and torch.equal(cut[0, :, 0], torch.tensor([min(i, k - 1) for i in range(6)], dtype=torch.float32))

    x = np.random.default_rng(0).normal(size=(64, 20, 1)).astype(np.float32)
    y = np.arange(64) % 2
    kw = dict(epochs=25, batch_size=8, lr=1e-3, weight_decay=0.0, seed=0, progress=False)
    for p in (0.0, 0.25, 1.0):
        rec = _Recorder()
        train_torch_classifier(rec, x, y, random_truncation=p, min_fraction=0.25, **kw)
        cut_share = np.mean([k < 20 for k in rec.kept])
        assert abs(cut_share - p * 15 / 16) < 0.08, (p, cut_share)  # k in 5..20: k = 20 (1 of 16 draws) is no cut
        assert min(rec.kept) >= 5 and all(rec.held)
        if p == 1.0:
            assert len(set(rec.kept)) > 10  # cuts spread over the season
