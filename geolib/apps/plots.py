"""Figures the notebooks share: training curves, Recall@K curves, retrieval strips.

Matplotlib only, so every figure renders the same under papermill, nbconvert and JupyterLab.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageOps

from ..data.images import load_image

CORRECT, WRONG = (40, 170, 60), (220, 40, 40)


def plot_history(history: Sequence[Mapping[str, Any]], title: str = "training"):
    """Loss per epoch, and every `… R@1` column against training minutes (epochs if untimed).

    Recall is evaluated only every few epochs, so its keys are gathered from every row, not the first.
    """
    epochs = [h["epoch"] for h in history]
    r1_keys = list(dict.fromkeys(k for h in history for k in h if k.endswith("R@1")))
    timed = bool(history) and all("minutes_total" in h for h in history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].plot(epochs, [h["loss"] for h in history], marker="o")
    axes[0].set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    for k in r1_keys:
        rows = [h for h in history if h.get(k) is not None]
        axes[1].plot([h["minutes_total"] if timed else h["epoch"] for h in rows], [h[k] for h in rows],
                     marker="o", label=k)
    axes[1].set(xlabel="training minutes" if timed else "epoch", ylabel="R@1 (%)", title=f"{title}: test R@1")
    if r1_keys:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_recall_curves(curves: Mapping[str, Mapping[str, np.ndarray]], max_k: int = 50):
    """`curves[model][direction]` = R@1..R@K in percent; one panel per direction."""
    directions = sorted({d for per_model in curves.values() for d in per_model})
    fig, axes = plt.subplots(1, max(1, len(directions)), figsize=(3.6 * max(1, len(directions)), 3.2), squeeze=False)
    for ax, d in zip(axes[0], directions):
        for model, per_model in curves.items():
            if d in per_model:
                c = np.asarray(per_model[d])[:max_k]
                ax.plot(np.arange(1, len(c) + 1), c, label=model)
        ax.set(title=d, xlabel="K", ylabel="Recall@K (%)", ylim=(0, 101))
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def framed(path, colour: tuple[int, int, int] | None, size: int = 96, border: int = 4) -> Image.Image:
    img = load_image(path).resize((size - 2 * border, size - 2 * border))
    return ImageOps.expand(img, border=border, fill=colour or (255, 255, 255))


def retrieval_strips(queries: Sequence[Any], galleries: Sequence[Sequence[Any]], correct: np.ndarray,
                     scores: np.ndarray | None = None, titles: Sequence[str] | None = None,
                     size: int = 96, row_labels: Sequence[str] | None = None):
    """One row per query: the query, then its top-k framed green (correct) or red (wrong).

    `queries` and `galleries` hold image paths; `correct[i, j]` says whether retrieval j of query i
    is a true match.
    """
    n, k = len(queries), (len(galleries[0]) if galleries else 0)
    fig, axes = plt.subplots(n, k + 1, figsize=(1.5 * (k + 1), 1.55 * n), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(framed(queries[i], None, size))
        axes[i][0].set_title(row_labels[i] if row_labels else "query", fontsize=7)
        for j in range(k):
            ok = bool(correct[i, j])
            axes[i][j + 1].imshow(framed(galleries[i][j], CORRECT if ok else WRONG, size))
            label = titles[i][j] if titles else ""
            if scores is not None:
                label = f"{label} {scores[i, j]:.2f}".strip()
            axes[i][j + 1].set_title(label, fontsize=7, color="green" if ok else "red")
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.tight_layout()
    return fig


def crossview_examples(ev: Any, query_view: str, gallery_view: str, n: int = 6, k: int = 5, seed: int = 0,
                       save: Any = None):
    """Strips of `n` random queries of one direction of a cross-view `Evaluation` with their top-k
    gallery images, labelled with place ids: the failures show what the model confuses."""
    from ..evaluation.crossview import top_matches

    scores, idx = top_matches(ev, query_view, gallery_view, k)
    qs, gs = ev.sets[("query", query_view)], ev.sets[("gallery", gallery_view)]
    pick = np.random.default_rng(seed).choice(len(qs.items), size=min(n, len(qs.items)), replace=False)
    correct = gs.labels[idx[pick]] == qs.labels[pick][:, None]
    titles = [[f"#{gs.labels[j]:04d}" for j in idx[i]] for i in pick]
    fig = retrieval_strips([qs.items[i].path for i in pick], [[gs.items[j].path for j in idx[i]] for i in pick],
                           correct, scores[pick], titles, row_labels=[f"#{qs.labels[i]:04d}" for i in pick])
    fig.suptitle(f"{query_view} → {gallery_view}", y=1.01)
    if save:
        fig.savefig(save, dpi=110, bbox_inches="tight")
    return fig
