"""Learning a linear projection of stored embeddings from a shop's own labels (numpy only).

The frozen backbone knows objects, not what the shop calls alike; a projection learned on top of
its embeddings from categories and product groups is the cheapest step in quality, needs no GPU
and keeps the whole pipeline one ONNX file (see `fashionrec_onnx.projection`).

The loss is a normalised softmax over learned class proxies (Proxy-NCA / NormSoftmax): each
projected, L2-normalised item is pulled to its category's proxy and pushed from the others. With
products, a second softmax over product proxies is weighted harder (photos of one product pull
together hardest). The projection starts as a regularised linear discriminant of the training
items (on Fashion-MNIST categories it holds most of the gain) and is fine-tuned by minibatch Adam.
Part of the items (whole products, when there are products) is held out and scored (precision@k,
mAP@k by label) before and after every epoch; the best epoch is kept (early stop).
Everything is seeded: the same data and seed give the same projection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..catalog.reports import Epoch as Epoch
from ..catalog.reports import TrainingReport as TrainingReport
from ..errors import BadArgumentError

log = logging.getLogger(__name__)

SHRINK = 0.1  # of the inside spread replaced by its mean variance (see `_discriminant_start`)
MIN_PER_LABEL = 4  # items a label needs to teach anything (a query and a few of its kind)
NORM_EPS = 1e-12
_EVAL_QUERIES = 2000  # held-out queries scored per epoch (a seeded sample past this)


@dataclass(frozen=True)
class Projection:
    """``unit((x - mean) @ matrix)``: what the refined model appends to the base graph."""

    mean: np.ndarray  # (d,) float32
    matrix: np.ndarray  # (d, D) float32

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project stored vectors as the refined model would: float32, unit rows."""
        projected = (np.asarray(vectors, np.float32) - self.mean) @ self.matrix
        norms = np.sqrt(np.sum(projected * projected, axis=1, keepdims=True))
        return (projected / np.maximum(norms, NORM_EPS)).astype(np.float32)


def _as_codes(values: np.ndarray | list[object]) -> np.ndarray:
    """Any labels as integer codes 0..n-1 (order of first sorted appearance)."""
    _, codes = np.unique(np.asarray([str(v) for v in values]), return_inverse=True)
    return codes.astype(np.int64)


def check_labels(labels: list[object], field_name: str = "label") -> np.ndarray:
    """Which items can teach: those whose label has at least `MIN_PER_LABEL` items. Refuses when
    fewer than two labels can (nothing to tell apart)."""
    if len(labels) == 0:
        raise BadArgumentError(
            f"no item has the metadata field {field_name!r}: there is nothing to learn from."
        )
    names, counts = np.unique(np.asarray([str(v) for v in labels]), return_counts=True)
    if len(names) < 2:
        raise BadArgumentError(
            f"all {len(labels)} labelled items have one {field_name} ({names[0]!r}): a projection "
            "learns what tells labels apart, so it needs at least two."
        )
    usable = names[counts >= MIN_PER_LABEL]
    if len(usable) < 2:
        raise BadArgumentError(
            f"too few items per {field_name}: {len(names)} labels but fewer than two have "
            f"{MIN_PER_LABEL} or more items (most has {int(counts.max())}); label more items."
        )
    return np.isin(np.asarray([str(v) for v in labels]), usable)


def split_held_out(
    labels: np.ndarray, groups: np.ndarray | None, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out item positions. With products, whole products are held out (a product
    seen in training would make held-out search look better than it is)."""
    rng = np.random.default_rng(seed)
    units = groups if groups is not None else np.arange(len(labels))
    unique = np.unique(units)
    chosen = rng.permutation(len(unique))[: max(1, int(round(share * len(unique))))]
    held = np.isin(units, unique[chosen])
    return np.flatnonzero(~held), np.flatnonzero(held)


def retrieval_scores(
    vectors: np.ndarray, labels: np.ndarray, k: int, map_k: int, seed: int = 0
) -> dict[str, float]:
    """ "More like this" among ``vectors``: each (sampled) item queries all the others; precision@k
    and mAP@map_k by label (AP divided by what could be found, as `evaluation` does)."""
    n = len(vectors)
    depth = min(max(k, map_k), n - 1)
    queries = np.arange(n)
    if n > _EVAL_QUERIES:
        queries = np.sort(np.random.default_rng(seed).choice(n, _EVAL_QUERIES, replace=False))
    counts = np.bincount(labels)
    precision, average = [], []
    for start in range(0, len(queries), 512):
        block = queries[start : start + 512]
        similarity = vectors[block] @ vectors.T
        similarity[np.arange(len(block)), block] = -np.inf
        top = np.argpartition(-similarity, depth - 1, axis=1)[:, :depth]
        order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
        ranked = np.take_along_axis(top, order, axis=1)
        hits = labels[ranked] == labels[block][:, None]
        precision.append(hits[:, :k].sum(axis=1) / k)
        head = hits[:, :map_k]
        found = np.cumsum(head, axis=1)
        ranks = np.arange(1, head.shape[1] + 1)
        possible = np.minimum(map_k, counts[labels[block]] - 1)
        total = np.sum(np.where(head, found / ranks, 0.0), axis=1)
        average.append(np.where(possible > 0, total / np.maximum(possible, 1), 0.0))
    return {
        f"precision@{k}": float(np.mean(np.concatenate(precision))),
        f"mAP@{map_k}": float(np.mean(np.concatenate(average))),
    }


def _discriminant_start(
    centred: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, dim: int, product_weight: float
) -> np.ndarray:
    """A regularised linear discriminant: directions that separate labels (and products, weighted
    harder) relative to the spread inside them, each weighted by how much it separates
    (``w / (1 + w)``), columns scaled to unit norm. Shrinking the inside spread towards its mean
    variance keeps the many weak directions of a few thousand items from being blown up."""
    x = centred.astype(np.float64)
    n, d = x.shape
    classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    means = np.zeros((classes, d))
    np.add.at(means, labels, x)
    means /= np.maximum(counts, 1)[:, None]
    between = (means * counts[:, None]).T @ means / n
    centre = means[labels]
    if groups is not None:
        sizes = np.bincount(groups)
        shared = sizes[groups] >= 2  # a product of one photo teaches nothing about products
        if shared.any():
            group_means = np.zeros((len(sizes), d))
            np.add.at(group_means, groups, x)
            group_means /= np.maximum(sizes, 1)[:, None]
            offsets = (group_means[groups] - centre) * shared[:, None]
            products = offsets.T @ offsets
            # each scatter counts by its share, so thousands of products do not drown the labels
            between = between / np.trace(between) + product_weight * products / max(np.trace(products), 1e-12)
            centre = np.where(shared[:, None], group_means[groups], centre)
    inside = x - centre
    within = inside.T @ inside / n
    within = (1 - SHRINK) * within + SHRINK * np.trace(within) / d * np.eye(d)
    values, axes = scipy.linalg.eigh(between, within)
    order = np.argsort(values)[::-1][:dim]
    values, axes = np.maximum(values[order], 0.0), axes[:, order]
    matrix = axes * (values / (1.0 + values))
    matrix /= np.maximum(np.linalg.norm(matrix, axis=0, keepdims=True), 1e-12)
    return (matrix * (values > 1e-9) + axes * (values <= 1e-9) * 1e-3).astype(np.float32)


class _Adam:
    def __init__(self, shapes: list[tuple[int, ...]], lr: float) -> None:
        self.lr, self.step = lr, 0
        self.m = [np.zeros(s, np.float32) for s in shapes]
        self.v = [np.zeros(s, np.float32) for s in shapes]

    def update(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.step += 1
        b1, b2 = 0.9, 0.999
        correction = np.sqrt(1 - b2**self.step) / (1 - b1**self.step)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.lr * correction) * m / (np.sqrt(v) + 1e-8)


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    norms = np.maximum(norms, NORM_EPS)
    return x / norms, norms


def _softmax_loss(
    unit_z: np.ndarray, proxies: np.ndarray, targets: np.ndarray, scale: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Cross-entropy of ``scale`` x cosine to each proxy; gradients to the unit rows and proxies."""
    unit_p, p_norms = _unit(proxies)
    logits = scale * (unit_z @ unit_p.T)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    rows = np.arange(len(targets))
    loss = float(-np.mean(np.log(probabilities[rows, targets] + 1e-12)))
    probabilities[rows, targets] -= 1.0
    probabilities *= scale / len(targets)
    grad_unit_z = probabilities @ unit_p
    grad_unit_p = probabilities.T @ unit_z
    grad_p = (grad_unit_p - unit_p * np.sum(grad_unit_p * unit_p, axis=1, keepdims=True)) / p_norms
    return loss, grad_unit_z, grad_p


def learn_projection(
    vectors: np.ndarray,
    labels: list[object] | np.ndarray,
    products: list[object] | np.ndarray | None = None,
    *,
    dim: int = 128,
    k: int = 5,
    map_k: int = 10,
    held_out: float = 0.2,
    epochs: int = 30,
    patience: int = 4,
    batch_size: int = 512,
    learning_rate: float = 5e-4,
    scale: float = 16.0,
    product_weight: float = 1.0,
    seed: int = 0,
    field_name: str = "label",
) -> tuple[Projection, TrainingReport]:
    """Learn a projection of unit ``vectors`` (n, d) from ``labels`` (and ``products``: a
    product's photos are pulled together hardest). Returns the projection of the best held-out
    epoch (the discriminant start counts as epoch 0) and the report with the training curve."""
    started = time.perf_counter()
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise BadArgumentError(
            f"one label per vector is needed: {vectors.shape} vectors, {len(labels)} labels"
        )
    if products is not None and len(products) != len(labels):
        raise BadArgumentError("one product per vector is needed")
    if not 0 < held_out < 1:
        raise BadArgumentError(f"the held-out share is a fraction between 0 and 1, got {held_out!r}")
    d = vectors.shape[1]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 2 <= dim <= d:
        raise BadArgumentError(
            f"dim must be a whole number from 2 to {d} (the stored dimension), got {dim!r}"
        )
    keep = check_labels(list(labels), field_name)
    dropped = int((~keep).sum())
    if dropped:
        log.info("left out %d items whose %s has fewer than %d items", dropped, field_name, MIN_PER_LABEL)
    x = vectors[keep]
    y = _as_codes(np.asarray(labels, dtype=object)[keep])
    groups = _as_codes(np.asarray(products, dtype=object)[keep]) if products is not None else None
    train, held = split_held_out(y, groups, held_out, seed)
    if len(np.unique(y[held])) < 2 or len(held) < MIN_PER_LABEL:
        raise BadArgumentError(
            f"too few labelled items to hold some out and still score them ({len(x)} usable): "
            "label more items."
        )
    mean = x[train].mean(axis=0)
    centred = x[train] - mean
    train_groups = _as_codes(groups[train]) if groups is not None else None
    matrix = _discriminant_start(centred, y[train], train_groups, dim, product_weight)

    def score(m: np.ndarray) -> dict[str, float]:
        return retrieval_scores(Projection(mean, m).apply(x[held]), y[held], k, map_k, seed)

    before = retrieval_scores(x[held], y[held], k, map_k, seed)
    best_scores = score(matrix)
    curve = [Epoch(0, float("nan"), best_scores[f"precision@{k}"], best_scores[f"mAP@{map_k}"], 0.0)]
    best, best_epoch = matrix.copy(), 0
    rng = np.random.default_rng(seed)
    classes = int(y.max()) + 1
    proxies = [_class_means(centred @ matrix, y[train], classes, rng)]
    targets = [y[train]]
    weights = [1.0]
    train_products = 0
    if groups is not None:
        codes = _as_codes(groups[train])
        train_products = int(codes.max()) + 1
        if train_products < len(train):  # products with several photos teach something
            proxies.append(_class_means(centred @ matrix, codes, train_products, rng))
            targets.append(codes)
            weights.append(product_weight)
    optimiser = _Adam([matrix.shape, *(p.shape for p in proxies)], learning_rate)
    stale = 0
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        order = rng.permutation(len(train))
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            xb = centred[rows]
            z = xb @ matrix
            unit_z, norms = _unit(z)
            grad_unit_z = np.zeros_like(unit_z)
            grads_p, loss = [], 0.0
            for proxy, target, weight in zip(proxies, targets, weights):
                part, g_z, g_p = _softmax_loss(unit_z, proxy, target[rows], scale)
                loss += weight * part
                grad_unit_z += weight * g_z
                grads_p.append(weight * g_p)
            grad_z = (grad_unit_z - unit_z * np.sum(grad_unit_z * unit_z, axis=1, keepdims=True)) / norms
            optimiser.update([matrix, *proxies], [xb.T @ grad_z, *grads_p])
            losses.append(loss)
        scores = score(matrix)
        curve.append(
            Epoch(epoch, float(np.mean(losses)), scores[f"precision@{k}"], scores[f"mAP@{map_k}"],
                  time.perf_counter() - epoch_started)
        )  # fmt: skip
        log.debug(
            "epoch %d: loss %.4f, held-out precision@%d %.4f, mAP@%d %.4f",
            epoch, curve[-1].loss, k, curve[-1].precision, map_k, curve[-1].map,
        )  # fmt: skip
        if _better(scores, best_scores, k, map_k):
            best, best_scores, best_epoch, stale = matrix.copy(), scores, epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    report = TrainingReport(
        items=len(vectors),
        train_items=len(train),
        held_out_items=len(held),
        labels=classes,
        products=int(len(np.unique(groups))) if groups is not None else 0,
        dim=dim,
        k=k,
        map_k=map_k,
        before=before,
        after=best_scores,
        best_epoch=best_epoch,
        curve=curve,
        dropped_items=dropped,
        seed=seed,
        seconds=time.perf_counter() - started,
    )
    return Projection(mean.astype(np.float32), best.astype(np.float32)), report


def _better(new: dict[str, float], old: dict[str, float], k: int, map_k: int) -> bool:
    """mAP first (it sees the whole top), precision@k to break ties."""
    return (new[f"mAP@{map_k}"], new[f"precision@{k}"]) > (old[f"mAP@{map_k}"], old[f"precision@{k}"])


def _class_means(z: np.ndarray, codes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Proxies start at their members' mean direction (a small seeded jitter for empty ones)."""
    unit_z, _ = _unit(z)
    sums = np.zeros((count, z.shape[1]), np.float64)
    np.add.at(sums, codes, unit_z)
    empty = ~np.any(sums, axis=1)
    sums[empty] = rng.normal(size=(int(empty.sum()), z.shape[1]))
    return _unit(sums.astype(np.float32))[0]
