"""The fraud model: an MLP over standardized numeric features and categorical embeddings.

Preprocessing (vocabularies, standardization) is fitted on the training rows only and saved
next to the model, so training, evaluation and scoring encode rows identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from jobs.shared.schemas import CATEGORICAL_FEATURES, NUMERIC_FEATURES

UNKNOWN = 0  # index every unseen category maps to
SCORE_ROWS = 65_536  # rows scored at once: the network's activations for millions would outweigh the rows


def in_chunks(score, numeric: np.ndarray, categorical: np.ndarray, rows: int = SCORE_ROWS) -> np.ndarray:
    """``score(numeric, categorical)`` over chunks of ``rows`` rows, concatenated: one chunk's activations
    in memory at a time (an MLP's hidden layers are wider than its input)."""
    if len(numeric) <= rows:
        return np.asarray(score(numeric, categorical))
    return np.concatenate([np.asarray(score(numeric[i : i + rows], categorical[i : i + rows]))
                           for i in range(0, len(numeric), rows)])


@dataclass
class Preprocessing:
    """Fitted encoders: category -> index per column, and numeric mean/std."""

    numeric: list[str]
    categorical: list[str]
    vocab: dict[str, list[str]]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> Preprocessing:
        num = frame[NUMERIC_FEATURES].astype("float64")
        std = num.std(ddof=0).replace(0, 1.0).fillna(1.0)
        return cls(
            numeric=list(NUMERIC_FEATURES),
            categorical=list(CATEGORICAL_FEATURES),
            vocab={c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in CATEGORICAL_FEATURES},
            mean=num.mean().fillna(0.0).tolist(),
            std=std.tolist(),
        )

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(numeric float32 [n, k], categorical int64 [n, c]); unseen categories -> 0.

        Numeric values are *not* standardized here: the model does it, so the ONNX file
        takes raw feature values.
        """
        numeric = frame[self.numeric].astype("float32").fillna(0.0).to_numpy()
        cats = np.stack(
            [
                frame[c].astype(str).map(self._index[j]).fillna(UNKNOWN).to_numpy()
                for j, c in enumerate(self.categorical)
            ],
            axis=1,
        ).astype("int64")
        return numeric, cats

    @cached_property
    def _index(self) -> list[dict[str, int]]:
        return [{v: i + 1 for i, v in enumerate(self.vocab[c])} for c in self.categorical]

    def encode_rows(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` for a few rows as dicts (one request's), without building a DataFrame: the
        same arrays (a missing or null numeric value is 0.0, an unseen category 0)."""
        index = self._index
        numeric = np.array([[0.0 if (v := row.get(c)) is None else v for c in self.numeric] for row in rows],
                           dtype="float32").reshape(len(rows), len(self.numeric))
        numeric[np.isnan(numeric)] = 0.0
        cats = np.array([[index[j].get(str(row[c]), UNKNOWN) for j, c in enumerate(self.categorical)] for row in rows],
                        dtype="int64").reshape(len(rows), len(self.categorical))
        return numeric, cats

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(pre: Preprocessing, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.1):
    """The network for a fitted :class:`Preprocessing` (torch imported lazily)."""
    import torch
    from torch import nn

    class FraudMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32))
            self.embeddings = nn.ModuleList(
                nn.Embedding(len(pre.vocab[c]) + 1, min(8, (len(pre.vocab[c]) + 2) // 2)) for c in pre.categorical
            )
            width = len(pre.numeric) + sum(e.embedding_dim for e in self.embeddings)
            layers: list[nn.Module] = []
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
                width = h
            layers.append(nn.Linear(width, 1))
            self.mlp = nn.Sequential(*layers)

        def forward(self, numeric, categorical):
            """Logits, shape [n]."""
            x = (numeric - self.mean) / self.std
            embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
            return self.mlp(torch.cat([x, *embedded], dim=1)).squeeze(1)

    class Probability(nn.Module):
        """Wraps the logits model so the exported graph outputs probabilities."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, numeric, categorical):
            return torch.sigmoid(self.net(numeric, categorical))

    net = FraudMLP()
    return net, Probability


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, precision_target: float = 0.9) -> dict:
    """PR-AUC, ROC-AUC, Brier score and recall at a fixed precision."""
    from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype="float64")
    if y_true.min() == y_true.max():
        raise ValueError("metrics need both classes in the labels")
    precision, recall, _ = precision_recall_curve(y_true, scores)
    ok = precision >= precision_target
    return {
        "pr_auc": float(average_precision_score(y_true, scores)),
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "brier": float(brier_score_loss(y_true, scores)),
        f"recall_at_precision_{int(precision_target * 100)}": float(recall[ok].max()) if ok.any() else 0.0,
        "positives": int(y_true.sum()),
        "rows": int(len(y_true)),
    }


def paired_bootstrap(y_true, challenger, champion, resamples: int = 300, seed: int = 0) -> dict:
    """PR-AUC difference (challenger - champion) with a 95 % paired bootstrap interval.

    Both models are scored on the same resampled rows each time, so the interval reflects the
    uncertainty of the *difference*, not of each model alone.
    """
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true).astype(int)
    a, b = np.asarray(challenger, dtype="float64"), np.asarray(champion, dtype="float64")
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y_true), len(y_true))
        if y_true[idx].min() == y_true[idx].max():
            continue
        deltas.append(average_precision_score(y_true[idx], a[idx]) - average_precision_score(y_true[idx], b[idx]))
    low, high = np.percentile(deltas, [2.5, 97.5])
    delta = average_precision_score(y_true, a) - average_precision_score(y_true, b)
    return {"delta": float(delta), "ci_low": float(low), "ci_high": float(high), "resamples": len(deltas)}


AMOUNT_BUCKETS = [0, 20, 100, 500, np.inf]  # currency units: everyday, regular, large, very large


def slice_metrics(frame: pd.DataFrame, scores: np.ndarray, label: str = "is_fraud") -> dict:
    """Metrics per channel and per amount bucket; slices with one class only report counts."""
    frame = frame.assign(_score=np.asarray(scores), _amount=np.expm1(frame["log_amount"]))
    frame["amount_bucket"] = pd.cut(frame["_amount"], AMOUNT_BUCKETS, right=False,
                                    labels=["<20", "20-100", "100-500", ">=500"]).astype(str)
    out: dict[str, dict] = {}
    for column in ("channel", "amount_bucket"):
        for value, part in frame.groupby(column):
            key = f"{column}={value}"
            if part[label].nunique() < 2:
                out[key] = {"rows": len(part), "positives": int(part[label].sum())}
            else:
                m = classification_metrics(part[label].to_numpy(), part["_score"].to_numpy())
                out[key] = {k: m[k] for k in ("pr_auc", "roc_auc", "rows", "positives")}
    return out
