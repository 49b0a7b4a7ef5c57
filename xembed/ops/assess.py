"""How good is a model trained on embeddings: cross-validated scores, spatial folds.

Neighbouring pixels are alike (spatial autocorrelation), so a random split
puts near-copies of a test pixel in the training set and overstates
accuracy. :func:`assess` makes folds of spatial blocks instead
(:func:`spatial_blocks`): every row of a block, all its pixels and years,
sits on the same side of every split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from xembed.ops.learn import import_sklearn
from xembed.schema import BANDS

__all__ = ["Assessment", "assess", "spatial_blocks"]


@dataclass(frozen=True, repr=False)
class Assessment:
    """Cross-validated scores of a model, from :func:`assess`.

    Attributes
    ----------
    kind : {"classifier", "regressor"}
    cv : {"spatial", "random"}
    folds : int
    scores : dict
        Classifiers: ``accuracy`` and ``kappa`` (Cohen's); regressors:
        ``r2``, ``rmse`` and ``mae``. Also ``result["accuracy"]``.
    per_class : pandas.DataFrame or None
        Classifiers: ``precision, recall, f1, support`` per class.
    confusion : pandas.DataFrame or None
        Classifiers: counts, true classes down, predicted across.
    table : pandas.DataFrame
        The rows used (with data and a label) with their ``fold``, ``block``
        (spatial CV) and out-of-fold ``predicted`` value.
    """

    kind: str
    cv: str
    folds: int
    scores: dict[str, float]
    table: pd.DataFrame
    per_class: pd.DataFrame | None = None
    confusion: pd.DataFrame | None = field(default=None)

    def __getitem__(self, name: str) -> float:
        return self.scores[name]

    def __repr__(self) -> str:
        scores = ", ".join(f"{k}={v:.3f}" for k, v in self.scores.items())
        return (
            f"Assessment({self.kind}, cv={self.cv!r}, folds={self.folds}, "
            f"n={len(self.table)}: {scores})"
        )


def _xy(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in metres: ``x``/``y`` columns, else the geometry (projected to UTM)."""
    if {"x", "y"} <= set(table.columns):
        return table["x"].to_numpy(np.float64), table["y"].to_numpy(np.float64)
    geometry = getattr(table, "geometry", None) if "geometry" in table.columns else None
    if geometry is None:
        raise ValueError(
            "spatial cross-validation needs where each row is: x/y columns in metres (tables "
            "from ds.embed.sample have them) or a geometry column; or pass cv='random'"
        )
    if geometry.crs is None:
        raise ValueError("the table's geometry has no CRS; set it, e.g. table.set_crs(4326)")
    if geometry.crs.is_geographic:
        geometry = geometry.to_crs(geometry.estimate_utm_crs())
    centres = geometry.centroid
    return centres.x.to_numpy(np.float64), centres.y.to_numpy(np.float64)


def spatial_blocks(table: pd.DataFrame, block_size: float = 500.0) -> np.ndarray:
    """The spatial block of every row: squares of ``block_size`` metres, numbered 0..n-1.

    Blocks are aligned on multiples of ``block_size`` of the rows' ``x``
    and ``y`` (metres, as in tables from :func:`xembed.ops.sample`), or of
    their geometry's centroid (projected to its UTM zone if in lon/lat).

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"x": [10.0, 490.0, 510.0, 10.0], "y": [5.0, 5.0, 5.0, 600.0]})
    >>> spatial_blocks(table, 500).tolist()
    [0, 0, 2, 1]
    """
    if not (np.isfinite(block_size) and block_size > 0):
        raise ValueError(f"block_size must be a positive number of metres, got {block_size!r}")
    x, y = _xy(table)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("some rows have no x/y (NaN); drop them before making spatial blocks")
    cells = np.column_stack([np.floor(x / block_size), np.floor(y / block_size)])
    _, block = np.unique(cells, axis=0, return_inverse=True)
    return block.reshape(-1).astype(np.int64)


def _is_classifier(model: Any) -> bool:
    base = import_sklearn("base")
    if hasattr(model, "get_params"):
        return bool(base.is_classifier(model))
    return hasattr(model, "classes_") or hasattr(model, "predict_proba")


def _splits(
    usable: pd.DataFrame, cv: str, folds: int, block_size: float, seed: int
) -> tuple[Any, np.ndarray | None]:
    """The splitter and the groups (block ids, spatial CV) of the usable rows."""
    selection = import_sklearn("model_selection")
    if cv == "spatial":
        groups = spatial_blocks(usable, block_size)
        n_blocks = int(groups.max()) + 1
        if n_blocks < folds:
            raise ValueError(
                f"the rows fall in {n_blocks} spatial blocks of {block_size:g} m, fewer than "
                f"folds={folds}; lower block_size or folds"
            )
        return selection.GroupKFold(n_splits=folds), groups
    if cv == "random":
        return selection.KFold(n_splits=folds, shuffle=True, random_state=seed), None
    raise ValueError(f"cv must be 'spatial' or 'random', got {cv!r}")


def _classifier_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[dict, Any, Any]:
    metrics = import_sklearn("metrics")
    labels = np.unique(np.concatenate([truth, predicted]))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    index = pd.Index(labels, name="class")
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support}, index=index
    )
    confusion = pd.DataFrame(
        metrics.confusion_matrix(truth, predicted, labels=labels),
        index=pd.Index(labels, name="true"),
        columns=pd.Index(labels, name="predicted"),
    )
    scores = {
        "accuracy": float(metrics.accuracy_score(truth, predicted)),
        "kappa": float(metrics.cohen_kappa_score(truth, predicted)),
    }
    return scores, per_class, confusion


def _regressor_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    metrics = import_sklearn("metrics")
    truth, predicted = truth.astype(np.float64), predicted.astype(np.float64)
    return {
        "r2": float(metrics.r2_score(truth, predicted)),
        "rmse": float(np.sqrt(metrics.mean_squared_error(truth, predicted))),
        "mae": float(metrics.mean_absolute_error(truth, predicted)),
    }


def assess(
    model: Any,
    table: pd.DataFrame,
    label: str,
    *,
    cv: Literal["spatial", "random"] = "spatial",
    folds: int = 5,
    block_size: float = 500.0,
    seed: int = 0,
) -> Assessment:
    """Cross-validated accuracy of a model on a table of embeddings and labels.

    For each of ``folds`` splits a copy of ``model`` (scikit-learn's
    ``clone``) is fitted on the other folds' rows and predicts this fold's;
    the scores compare every row's out-of-fold prediction with its label.
    With ``cv="spatial"`` (the default) folds are made of spatial blocks of
    ``block_size`` metres (:func:`spatial_blocks`, scikit-learn's
    ``GroupKFold`` with the blocks as groups): neighbouring pixels of one
    polygon, and one place's years, never sit on both sides of a split.
    ``cv="random"`` shuffles rows into folds, for comparison: on
    autocorrelated pixels it overstates accuracy.

    Parameters
    ----------
    model : estimator
        A scikit-learn classifier or regressor (fitted or not: it is cloned).
    table : pandas.DataFrame
        Band columns ``A00..A63`` and ``label``, e.g. from
        :func:`xembed.ops.sample` (spatial CV also needs ``x``/``y`` in
        metres or a geometry column). Rows without data or label are left out.
    label : str
        The column to predict.
    cv : {"spatial", "random"}
    folds : int
    block_size : float
        Side of the spatial blocks in metres: larger than the distance over
        which pixels look alike (fields here are a few hundred metres).
    seed : int
        The shuffle of ``cv="random"``.

    Returns
    -------
    Assessment
        ``scores`` (accuracy and Cohen's kappa, or R2, RMSE and MAE),
        ``per_class`` precision/recall/F1, the ``confusion`` matrix and the
        rows with their fold and prediction.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import xembed
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0, 5000, 200)
    >>> table = pd.DataFrame(rng.normal(size=(200, 64)), columns=xembed.BANDS)
    >>> table["A00"] += np.where(x < 2500, 3.0, -3.0)  # the class shows in A00
    >>> table["cover"], table["x"], table["y"] = np.where(x < 2500, "a", "b"), x, 0.0
    >>> result = assess(KNeighborsClassifier(3), table, "cover")
    >>> result["accuracy"] > 0.9, result.confusion.shape
    (True, (2, 2))
    """
    if label not in table.columns:
        raise ValueError(
            f"label {label!r} is not a column of the table ({list(table.columns)[:8]}...)"
        )
    bands = [c for c in table.columns if c in BANDS]
    if not bands:
        raise ValueError("the table has no band columns (A00..A63); make it with ds.embed.sample")
    if int(folds) < 2:
        raise ValueError(f"folds must be at least 2, got {folds!r}")
    usable = table.dropna(subset=[*bands, label])
    X, truth = usable[bands].to_numpy(np.float64), usable[label].to_numpy()
    splitter, groups = _splits(usable, cv, int(folds), block_size, seed)
    if len(usable) < folds:
        raise ValueError(f"only {len(usable)} rows with data and a label for {folds} folds")
    base = import_sklearn("base")
    fold = np.full(len(usable), -1, dtype=np.int64)
    predicted = np.empty(len(usable), dtype=truth.dtype)
    for i, (train, test) in enumerate(splitter.split(X, truth, groups)):
        fitted = base.clone(model).fit(X[train], truth[train])
        predicted[test] = fitted.predict(X[test])
        fold[test] = i
    rows = usable.drop(columns=bands).assign(fold=fold, predicted=predicted)
    if groups is not None:
        rows.insert(rows.columns.get_loc("fold"), "block", groups)
    if _is_classifier(model):
        scores, per_class, confusion = _classifier_scores(truth, predicted)
        return Assessment("classifier", cv, int(folds), scores, rows, per_class, confusion)
    return Assessment("regressor", cv, int(folds), _regressor_scores(truth, predicted), rows)
