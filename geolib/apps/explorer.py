"""Looking at retrievals: a live ipywidgets explorer and the static views papermill keeps.

Researchers learn most from what a model gets wrong, so every run's top-k lists are kept with
enough metadata (paths, places, UTM, regions) to show any query beside its retrievals, on a map,
without touching the model again. `ExplorerResults` holds them; `explore` wraps them in widgets
for JupyterLab; `query_grid`, `map_png`, `map_figure`, `recall_figure` and `region_confusion_figure`
draw the same information for executed notebooks and the HTML report, where no frontend runs.

Correct means: same place label (cross-view, University-1652 protocol) or within `radius` metres
(VPR, `vpr-25m`). "Worst" queries are those whose first correct retrieval comes latest (none in the
top-k counts as k), ties broken by the most confident top-1: confident mistakes first.
"""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..data.images import ImageError, load_image

if TYPE_CHECKING:
    from ..evaluation.crossview import Evaluation
    from ..data.datasets import ImageItem

GREEN, RED, NEUTRAL = "#28aa3c", "#dc2828", "#4a5a78"
DIRECTION_ORDER = ("street→drone", "street→satellite", "drone→satellite", "satellite→drone", "query→database")
UNKNOWN_REGION = "unknown"
TOPK_NAME, QUERY_NAME, LOCALIZED_NAME = "top-k", "query (truth)", "your photo: top places"
_DATA_KEYS = ("x", "y", "text", "hovertext", "marker")
_CAPTION = "font-size:11px;line-height:1.3"
PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
           "#aec7e8", "#ffbb78", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d", "#393b79")


# --------------------------------------------------------------------------- result structures

@dataclass
class ImageSet:
    """One side of a retrieval (queries or gallery): what the explorer needs to show an item."""

    paths: list[str]
    places: list[Any]
    xy: np.ndarray  # (N, 2) UTM east, north in metres; NaN where unknown
    regions: list[str]

    @classmethod
    def from_items(cls, items: Sequence["ImageItem"], regions: Sequence[Any] | None = None) -> "ImageSet":
        xy = np.array([[np.nan if it.utm_east is None else it.utm_east,
                        np.nan if it.utm_north is None else it.utm_north] for it in items], dtype=np.float64)
        if regions is None:
            regions = [it.meta.get("region") for it in items]
        return cls([str(it.path) for it in items], [_place(it) for it in items], xy.reshape(-1, 2),
                   [UNKNOWN_REGION if r is None else str(r) for r in regions])

    def __len__(self) -> int:
        return len(self.paths)


def _place(item: "ImageItem") -> Any:
    if item.label is not None:
        return int(item.label)
    return item.meta.get("pano_id") or Path(item.path).stem


@dataclass
class Retrievals:
    """Top-k of every query of one direction of one run, with correctness decided once."""

    run: str
    direction: str
    protocol: str
    queries: ImageSet
    gallery: ImageSet
    index: np.ndarray  # (Q, K) gallery indices, best first
    scores: np.ndarray  # (Q, K) similarity; NaN when the source had none
    correct: np.ndarray  # (Q, K) bool
    curve: np.ndarray | None = None  # R@1..R@n in percent
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    @property
    def n_queries(self) -> int:
        return int(self.index.shape[0])

    def distances(self) -> np.ndarray:
        """(Q, K) metres from each query's true position to each retrieval's; NaN when unknown."""
        g = self.gallery.xy[self.index]
        return np.linalg.norm(g - self.queries.xy[:, None, :], axis=-1)

    def wrong(self) -> np.ndarray:
        """Query indices whose top-1 is wrong: the "only wrong" filter."""
        return np.flatnonzero(~self.correct[:, 0])

    def first_correct(self) -> np.ndarray:
        """0-based rank of the first correct retrieval per query, k when none is in the top-k."""
        hit = self.correct.any(axis=1)
        return np.where(hit, self.correct.argmax(axis=1), self.k)

    def first(self, n: int) -> np.ndarray:
        return np.arange(min(n, self.n_queries))

    def worst(self, n: int) -> np.ndarray:
        top1 = np.nan_to_num(self.scores[:, 0], nan=0.0)
        order = np.lexsort((np.arange(self.n_queries), -top1, -self.first_correct()))
        return order[:n]

    def shown(self, q: int, k: int) -> list[dict[str, Any]]:
        """What the explorer displays for query `q`: one row per rank."""
        d = self.distances()[q]
        return [{"rank": r + 1, "gallery_index": int(self.index[q, r]), "place": self.gallery.places[self.index[q, r]],
                 "score": float(self.scores[q, r]), "correct": bool(self.correct[q, r]),
                 "colour": GREEN if self.correct[q, r] else RED, "distance_m": float(d[r]),
                 "region": self.gallery.regions[self.index[q, r]], "path": self.gallery.paths[self.index[q, r]]}
                for r in range(min(k, self.k))]


class ExplorerResults:
    """Retrievals of one or several runs, keyed by (run, direction), ready for `explore`."""

    def __init__(self, retrievals: Iterable[Retrievals] = ()) -> None:
        self.runs: dict[str, dict[str, Retrievals]] = {}
        for r in retrievals:
            self.add(r)

    def add(self, r: Retrievals) -> "ExplorerResults":
        self.runs.setdefault(r.run, {})[r.direction] = r
        return self

    @classmethod
    def from_evaluation(cls, name: str, ev: "Evaluation", k: int = 10) -> "ExplorerResults":
        return cls().add_evaluation(name, ev, k)

    def add_evaluation(self, name: str, ev: "Evaluation", k: int = 10) -> "ExplorerResults":
        """Every direction of a cross-view `Evaluation`; the embeddings are searched once, here."""
        from ..evaluation.metrics import PROTOCOL_UNIVERSITY, topk_search

        for direction, res in ev.results.items():
            qs, gs = ev.sets[("query", res.query)], ev.sets[("gallery", res.gallery)]
            scores, idx = topk_search(qs.emb, gs.emb, k)
            correct = gs.labels[idx] == qs.labels[:, None]
            self.add(Retrievals(name, direction, PROTOCOL_UNIVERSITY, ImageSet.from_items(qs.items),
                                ImageSet.from_items(gs.items), idx, scores.astype(np.float64), correct,
                                np.asarray(res.curve, dtype=np.float64), dict(res.metrics)))
        return self

    def add_vpr(self, name: str, query_items: Sequence["ImageItem"], db_items: Sequence["ImageItem"],
                query_emb: np.ndarray, db_emb: np.ndarray, k: int = 10, radius: float = 25.0,
                query_regions: Sequence[Any] | None = None, db_regions: Sequence[Any] | None = None,
                direction: str = "query→database") -> "ExplorerResults":
        """A place-recognition run: correct means within `radius` metres (inclusive) in UTM."""
        from ..training.cosplace import retrieve
        from ..data.datasets import utm_of
        from ..evaluation.metrics import PROTOCOL_VPR

        ks = [x for x in (1, 5, 10, 20) if x <= len(db_items)]
        res = retrieve(query_emb, utm_of(query_items), db_emb, utm_of(db_items), ks=ks, radius=radius, k=k)
        r = Retrievals(name, direction, PROTOCOL_VPR, ImageSet.from_items(query_items, query_regions),
                       ImageSet.from_items(db_items, db_regions), res.predictions,
                       res.per_query["scores"].astype(np.float64), res.correct, None, res.metrics)
        r.curve = _curve_within_k(r)
        return self.add(r)

    def names(self) -> list[str]:
        return list(self.runs)

    def directions(self, run: str) -> list[str]:
        known = [d for d in DIRECTION_ORDER if d in self.runs[run]]
        return known + sorted(set(self.runs[run]) - set(known))

    def get(self, run: str, direction: str) -> Retrievals:
        try:
            return self.runs[run][direction]
        except KeyError:
            raise KeyError(f"no retrievals for run {run!r}, direction {direction!r}; "
                           f"have {[(r, d) for r in self.runs for d in self.runs[r]]}") from None

    def __iter__(self):
        for run in self.runs:
            for d in self.directions(run):
                yield self.runs[run][d]

    def __len__(self) -> int:
        return sum(len(v) for v in self.runs.values())


def _curve_within_k(r: Retrievals) -> np.ndarray:
    first = r.first_correct()
    return np.array([100.0 * np.mean(first < k) for k in range(1, r.k + 1)])


# --------------------------------------------------------------------------- images, lazily

@functools.lru_cache(maxsize=4096)
def thumbnail_png(path: str, size: int = 112) -> bytes:
    """Decoded once per (path, size) and cached, so moving a slider never decodes an image twice."""
    from PIL import Image

    try:
        img = load_image(path)
        img.thumbnail((size, size))
    except ImageError:
        img = Image.new("RGB", (size, size), (200, 200, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def region_colours(regions: Iterable[str]) -> dict[str, str]:
    """The same region gets the same colour in every view of a run (sorted, then the palette)."""
    names = sorted(set(regions), key=lambda r: (r == UNKNOWN_REGION, len(r), r))
    return {r: ("#bbbbbb" if r == UNKNOWN_REGION else PALETTE[i % len(PALETTE)]) for i, r in enumerate(names)}


# --------------------------------------------------------------------------- the map (plotly)
# Two panels: an overview of every gallery place (regions can lie kilometres apart) and a zoom on
# the query's surroundings, where places tens of metres apart can be told apart.
PANELS = (("x", "y"), ("x2", "y2"))  # overview, zoom
ZOOM_RADIUS, ZOOM_PAD = 150.0, 15.0


def _origin(r: Retrievals) -> np.ndarray:
    xy = np.vstack([r.gallery.xy, r.queries.xy])
    xy = xy[np.isfinite(xy).all(axis=1)]
    return np.floor(xy.min(axis=0) / 100.0) * 100.0 if len(xy) else np.zeros(2)


def zoom_box(r: Retrievals, centre: np.ndarray) -> tuple[list[float], list[float]] | None:
    """(x range, y range) around `centre` (UTM) covering the gallery within ZOOM_RADIUS, origin-relative."""
    if not np.isfinite(centre).all():
        return None
    g = r.gallery.xy[np.isfinite(r.gallery.xy).all(axis=1)]
    near = np.vstack([g[np.linalg.norm(g - centre, axis=1) <= ZOOM_RADIUS], centre[None]])
    lo, hi = near.min(axis=0) - ZOOM_PAD, near.max(axis=0) + ZOOM_PAD
    half = max((hi - lo).max() / 2, 30.0)
    mid = (lo + hi) / 2 - _origin(r)
    return [float(mid[0] - half), float(mid[0] + half)], [float(mid[1] - half), float(mid[1] + half)]


def map_traces(r: Retrievals, q: int, k: int, colours: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Plotly scatter traces for both panels: gallery by region, the query's true position, the top-k.

    Positions are metres east/north of a round UTM origin, so the axes read as distances.
    """
    colours = colours or region_colours(r.gallery.regions + r.queries.regions)
    o = _origin(r)
    traces = []
    for panel, (xa, ya) in enumerate(PANELS):
        group = [*_gallery_traces(r, colours, o), _query_trace(r, q, o), _topk_trace(r, q, k, colours, o)]
        for t in group:
            t.update(xaxis=xa, yaxis=ya, legendgroup=t["name"], showlegend=panel == 1)
        traces += group
    return traces


def _gallery_traces(r: Retrievals, colours: dict[str, str], o: np.ndarray) -> list[dict[str, Any]]:
    regions = np.array(r.gallery.regions, dtype=object)
    out = []
    for reg in sorted(set(r.gallery.regions), key=lambda x: list(colours).index(x)):
        sel = np.flatnonzero(regions == reg)
        out.append(dict(type="scatter", mode="markers", name=f"gallery · region {reg}",
                        x=(r.gallery.xy[sel, 0] - o[0]).tolist(), y=(r.gallery.xy[sel, 1] - o[1]).tolist(),
                        hovertext=[f"place {r.gallery.places[i]} (region {reg})" for i in sel], hoverinfo="text",
                        marker=dict(size=7, color=colours[reg], opacity=0.5)))
    return out


def _topk_trace(r: Retrievals, q: int, k: int, colours: dict[str, str], o: np.ndarray) -> dict[str, Any]:
    rows = r.shown(q, k)
    xy = r.gallery.xy[[row["gallery_index"] for row in rows]].reshape(-1, 2)
    return dict(type="scatter", mode="markers+text", name=TOPK_NAME,
                x=(xy[:, 0] - o[0]).tolist(), y=(xy[:, 1] - o[1]).tolist(),
                text=[str(row["rank"]) for row in rows], textposition="top center",
                hovertext=[f"#{row['rank']} place {row['place']} · {row['score']:.3f} · {_metres(row['distance_m'])}"
                           for row in rows], hoverinfo="text",
                marker=dict(size=13, symbol="diamond", color=[colours.get(row["region"], "#bbb") for row in rows],
                            line=dict(width=3, color=[row["colour"] for row in rows])))


def _query_trace(r: Retrievals, q: int, o: np.ndarray) -> dict[str, Any]:
    x, y = r.queries.xy[q] - o
    return dict(type="scatter", mode="markers", name=QUERY_NAME, x=[float(x)], y=[float(y)],
                hovertext=[f"query {q}: place {r.queries.places[q]}"], hoverinfo="text",
                marker=dict(size=20, symbol="star-open", color="black", line=dict(width=2, color="black")))


def map_layout(r: Retrievals, q: int = 0, height: int = 430) -> dict[str, Any]:
    o = _origin(r)
    layout: dict[str, Any] = dict(
        height=height, margin=dict(l=50, r=10, t=60, b=40), template="plotly_white",
        title=dict(text=f"{r.run} · {r.direction} (metres from UTM E {o[0]:.0f}, N {o[1]:.0f})", font=dict(size=13)),
        xaxis=dict(domain=[0.0, 0.36], title="east (m)"), yaxis=dict(title="north (m)", scaleanchor="x"),
        xaxis2=dict(domain=[0.44, 1.0], title="east (m)"), yaxis2=dict(anchor="x2", scaleanchor="x2"),
        legend=dict(font=dict(size=10)),
        annotations=[dict(text="overview", x=0.18, xref="paper", y=1.0, yref="paper", yanchor="bottom", showarrow=False),
                     dict(text="around the query", x=0.72, xref="paper", y=1.0, yref="paper", yanchor="bottom",
                          showarrow=False)])
    box = zoom_box(r, r.queries.xy[q])
    if box:
        layout["xaxis2"]["range"], layout["yaxis2"]["range"] = box
    return layout


def map_figure(r: Retrievals, q: int = 0, k: int = 5):
    """The explorer's map as a plain plotly Figure (for HTML files and the report)."""
    import plotly.graph_objects as go

    return go.Figure(data=map_traces(r, q, k), layout=map_layout(r, q))


def save_map_html(fig, path: str | os.PathLike) -> Path:
    """Self-contained HTML: plotly.js is embedded, so the page opens offline."""
    from ..paths import atomic_write_text

    return atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


# --------------------------------------------------------------------------- static figures

def query_grid(r: Retrievals, queries: Sequence[int], k: int = 5, title: str | None = None, size: int = 96):
    """Rows of query + top-k framed green/red, titled with place, score and distance."""
    from .plots import retrieval_strips

    queries = [int(q) for q in queries]
    k = min(k, r.k)
    d = r.distances()
    titles = [[f"#{j + 1} place {r.gallery.places[r.index[q, j]]}\n{r.scores[q, j]:.2f} · {_metres(d[q, j])}"
               for j in range(k)] for q in queries]
    fig = retrieval_strips([r.queries.paths[q] for q in queries],
                           [[r.gallery.paths[r.index[q, j]] for j in range(k)] for q in queries],
                           r.correct[queries, :k], None, titles, size=size,
                           row_labels=[f"query {q}\nplace {r.queries.places[q]}" for q in queries])
    if title:
        fig.suptitle(title, y=1.0 + 0.12 / max(1, len(queries)), fontsize=10)
    return fig


def _metres(d: float) -> str:
    return f"{d:.0f} m" if np.isfinite(d) else ""


def map_png(r: Retrievals, q: int = 0, k: int = 5):
    """The map drawn with matplotlib (overview and zoom), for executed notebooks and the report."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"width_ratios": [1, 1.4]})
    traces = map_traces(r, q, k)
    for ax, (xa, _) in zip(axes, PANELS):
        for t in (t for t in traces if t["xaxis"] == xa):
            _scatter_mpl(ax, t)
        ax.set(xlabel="east (m)", ylabel="north (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    box = zoom_box(r, r.queries.xy[q])
    if box:
        axes[1].set_aspect("equal", adjustable="box")
        axes[1].set(xlim=box[0], ylim=box[1])
    axes[0].set_title("overview", fontsize=9)
    axes[1].set_title(f"around query {q} (truth ★, top-{min(k, r.k)} ◆ framed green/red)", fontsize=9)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    o = _origin(r)
    fig.suptitle(f"{r.run} · {r.direction}: metres from UTM E {o[0]:.0f}, N {o[1]:.0f}", fontsize=10)
    fig.tight_layout()
    return fig


def _scatter_mpl(ax, t: dict[str, Any]) -> None:
    m = t["marker"]
    if t["name"].startswith("gallery"):
        ax.scatter(t["x"], t["y"], s=16, c=m["color"], alpha=0.55, label=t["name"])
    elif t["name"] == TOPK_NAME:
        ax.scatter(t["x"], t["y"], s=90, marker="D", c=m["color"], edgecolors=m["line"]["color"],
                   linewidths=2.2, label=t["name"], zorder=3)
        for x, y, s in zip(t["x"], t["y"], t["text"]):
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7,
                        annotation_clip=True)
    else:
        ax.scatter(t["x"], t["y"], s=300, marker="*", facecolors="none", edgecolors="black", linewidths=1.5,
                   label=t["name"], zorder=4)


def recall_figure(results: ExplorerResults, max_k: int = 50):
    """Recall@K per direction (panels) and run (lines)."""
    from .plots import plot_recall_curves

    curves = {run: {d: r.curve for d, r in per.items() if r.curve is not None} for run, per in results.runs.items()}
    return plot_recall_curves(curves, max_k=max_k)


def region_confusion(r: Retrievals) -> tuple[list[str], np.ndarray]:
    """Counts of (true region of the query, region of its top-1 retrieval)."""
    labels = sorted(set(r.queries.regions) | {r.gallery.regions[i] for i in r.index[:, 0]},
                    key=lambda x: (x == UNKNOWN_REGION, len(x), x))
    pos = {lab: i for i, lab in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for q in range(r.n_queries):
        m[pos[r.queries.regions[q]], pos[r.gallery.regions[r.index[q, 0]]]] += 1
    return labels, m


def region_confusion_figure(results: ExplorerResults, run: str):
    """One confusion matrix of regions per direction of `run` (rows: truth, columns: top-1)."""
    import matplotlib.pyplot as plt

    dirs = results.directions(run)
    fig, axes = plt.subplots(1, len(dirs), figsize=(3.3 * len(dirs), 3.3), squeeze=False)
    for ax, d in zip(axes[0], dirs):
        labels, m = region_confusion(results.get(run, d))
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, int(m.max())))
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                    color="white" if v > m.max() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set(title=f"{d}", xlabel="top-1 region", ylabel="true region")
    fig.suptitle(f"{run}: regions, truth vs top-1", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the live explorer

def frontend_present() -> bool:
    """True in a kernel started by a Jupyter server or VS Code, false under papermill/nbconvert.

    jupyter_server gives every kernel it starts for a notebook `JPY_SESSION_NAME`; nbclient (used
    by papermill and nbconvert) does not. `GEOLIB_INTERACTIVE=0/1` overrides.
    """
    forced = os.environ.get("GEOLIB_INTERACTIVE")
    if forced in ("0", "1"):
        return forced == "1"
    return bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID"))


def explore(results: ExplorerResults, index=None, model=None, thumb: int = 112, k: int = 5,
            view: str = "street") -> "Explorer":
    """The live explorer over `results`; with a gallery `index` (and its model) photos can be uploaded."""
    return Explorer(results, index=index, model=model, thumb=thumb, k=k, view=view)


def _explorer_base():
    import ipywidgets as widgets

    return widgets.VBox


class Explorer(_explorer_base()):  # type: ignore[misc]
    """Controls, the query beside its top-k, a plotly map and a photo upload, in one VBox.

    Widgets are made once; a slider move only swaps cached thumbnails, captions and two map traces.
    `shown` holds what is on screen (rank, place, score, colour, distance) for tests and users.
    """

    def __init__(self, results: ExplorerResults, index=None, model=None, thumb: int = 112, k: int = 5,
                 view: str = "street") -> None:
        import ipywidgets as w

        if not len(results):
            raise ValueError("no retrievals to explore: build ExplorerResults from an Evaluation first")
        self.results, self.thumb, self.view = results, thumb, view
        self.index, self.model = index, model
        self.shown: list[dict[str, Any]] = []
        self.query_index: int | None = None
        self.max_k = max(r.k for r in results)
        self._build_controls(w, k)
        self._build_tiles(w)
        self.map = self._build_map()
        self._build_upload(w)
        super().__init__([self.controls, self.header, self.tiles, self.map_box, self.upload_box])
        self._connect()
        self._on_run()

    # ---- construction
    def _build_controls(self, w, k: int) -> None:
        self.run = w.Dropdown(options=self.results.names(), description="run")
        self.direction = w.Dropdown(description="direction")
        self.only_wrong = w.ToggleButton(value=False, description="only wrong", icon="filter",
                                         tooltip="only queries whose top-1 is wrong")
        self.query = w.IntSlider(min=0, max=0, description="query", continuous_update=True)
        self.k = w.IntSlider(value=min(k, self.max_k), min=1, max=self.max_k, description="k")
        self.controls = w.VBox([w.HBox([self.run, self.direction, self.only_wrong]), w.HBox([self.query, self.k])])
        self.header = w.HTML()

    def _build_tiles(self, w) -> None:
        def tile() -> tuple[Any, Any, Any]:
            img = w.Image(format="png", layout=w.Layout(width=f"{self.thumb}px", height=f"{self.thumb}px",
                                                        border=f"4px solid {NEUTRAL}", object_fit="cover"))
            cap = w.HTML(layout=w.Layout(width=f"{self.thumb + 8}px"))
            return w.VBox([img, cap]), img, cap

        self.query_tile = tile()
        self.rank_tiles = [tile() for _ in range(self.max_k)]
        self.tiles = w.HBox([self.query_tile[0], *[t[0] for t in self.rank_tiles]],
                            layout=w.Layout(flex_flow="row wrap"))

    def _build_map(self):
        import plotly.graph_objects as go

        return go.FigureWidget()

    def _build_upload(self, w) -> None:
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="localize a photo")
        self.upload_message = w.HTML()
        self.upload_results = w.HTML()
        if self.index is None:
            self.upload.disabled = True
            self.upload_message.value = ("<i>No gallery index given: run notebook 02 (it saves "
                                         "outputs/&lt;profile&gt;/index/) and pass it to explore(…, index=…).</i>")
        self.map_box = w.VBox([self.map])
        self.upload_box = w.VBox([w.HBox([self.upload, self.upload_message]), self.upload_results])

    def _connect(self) -> None:
        self.run.observe(lambda _: self._on_run(), "value")
        self.direction.observe(lambda _: self._on_direction(), "value")
        self.only_wrong.observe(lambda _: self._on_filter(), "value")
        self.query.observe(lambda _: self._update(), "value")
        self.k.observe(lambda _: self._update(), "value")
        self.upload.observe(lambda ch: self.handle_upload(), "value")

    # ---- state
    @property
    def current(self) -> Retrievals:
        return self.results.get(self.run.value, self.direction.value)

    def candidates(self) -> np.ndarray:
        """Query indices the slider walks: all, or only the wrong ones."""
        r = self.current
        return r.wrong() if self.only_wrong.value else np.arange(r.n_queries)

    def _on_run(self) -> None:
        dirs = self.results.directions(self.run.value)
        keep = self.direction.value if self.direction.value in dirs else dirs[0]
        with self.hold_trait_notifications():
            self.direction.options = dirs
            self.direction.value = keep
        self._on_direction()

    def _on_direction(self) -> None:
        if self.direction.value is None:
            return
        self.k.max = self.current.k
        self._redraw_map_base()
        self._on_filter()

    def _on_filter(self) -> None:
        n = len(self.candidates())
        self.query.max = max(0, n - 1)
        self.query.value = min(self.query.value, self.query.max)
        self._update()

    # ---- drawing
    def _update(self) -> None:
        r, cands = self.current, self.candidates()
        if not len(cands):
            self.query_index, self.shown = None, []
            self.header.value = f"<b>{r.run} · {r.direction}</b>: no query has a wrong top-1."
            for box, _, _ in [self.query_tile, *self.rank_tiles]:
                box.layout.display = "none"
            return
        q = int(cands[self.query.value])
        self.query_index, self.shown = q, r.shown(q, self.k.value)
        self._draw_header(r, q, len(cands))
        self._draw_tiles(r, q)
        self._draw_map_query(r, q)

    def _draw_header(self, r: Retrievals, q: int, n: int) -> None:
        first = r.first_correct()[q]
        found = f"first correct at rank {first + 1}" if first < r.k else f"no correct place in the top-{r.k}"
        self.header.value = (f"<b>{r.run} · {r.direction}</b> ({r.protocol}) — query {q} "
                             f"({self.query.value + 1} of {n}{' wrong' if self.only_wrong.value else ''}), "
                             f"place <b>{r.queries.places[q]}</b>, region {r.queries.regions[q]}: {found}")

    def _draw_tiles(self, r: Retrievals, q: int) -> None:
        box, img, cap = self.query_tile
        box.layout.display = ""
        img.value = thumbnail_png(r.queries.paths[q], self.thumb)
        cap.value = f"<div style='{_CAPTION}'><b>query {q}</b><br>place {r.queries.places[q]}<br>region {r.queries.regions[q]}</div>"
        for j, (box, img, cap) in enumerate(self.rank_tiles):
            if j >= len(self.shown):
                box.layout.display = "none"
                continue
            row = self.shown[j]
            box.layout.display = ""
            img.value = thumbnail_png(row["path"], self.thumb)
            img.layout.border = f"4px solid {row['colour']}"
            cap.value = (f"<div style='{_CAPTION};color:{row['colour']}'><b>#{row['rank']}</b> place {row['place']}"
                         f"<br>score {row['score']:.3f}<br>{_metres(row['distance_m'])} from truth</div>")

    def _redraw_map_base(self) -> None:
        r = self.current
        q = int(self.candidates()[0]) if len(self.candidates()) else 0
        with self.map.batch_update():
            self.map.data = ()
            self.map.add_traces(map_traces(r, q, self.k.value))
            self.map.layout = map_layout(r, q)

    def _draw_map_query(self, r: Retrievals, q: int) -> None:
        colours = region_colours(r.gallery.regions + r.queries.regions)
        new = {TOPK_NAME: _topk_trace(r, q, self.k.value, colours, _origin(r)), QUERY_NAME: _query_trace(r, q, _origin(r))}
        box = zoom_box(r, r.queries.xy[q])
        with self.map.batch_update():
            for trace in self.map.data:
                if trace.name in new:
                    trace.update({key: v for key, v in new[trace.name].items() if key in _DATA_KEYS})
            if box:
                self.map.layout.xaxis2.range, self.map.layout.yaxis2.range = box

    # ---- localize an uploaded photo
    def handle_upload(self, content: bytes | None = None, name: str | None = None) -> list | None:
        """Localize the uploaded photo; any problem becomes a message in the widget, never a traceback."""
        from ..retrieval.localize import decode_upload, localize

        if content is None:
            if not self.upload.value:
                return None
            f = self.upload.value[0]
            content, name = bytes(f["content"]), f["name"]
        if self.index is None:
            self.upload_message.value = "<span style='color:#b00'>No gallery index: run notebook 02 first.</span>"
            return None
        try:
            img, notes = decode_upload(content, name or "upload")
            places = localize(img, self.index, model=self.model, k=self.k.value, view=self.view)
        except (ImageError, ValueError, FileNotFoundError) as err:
            self.upload_message.value = f"<span style='color:#b00'>{_html(str(err))}</span>"
            self.upload_results.value = ""
            return None
        note = f" ({'; '.join(notes)})" if notes else ""
        self.upload_message.value = f"<span style='color:#060'>{_html(name or 'photo')}: localized{note}.</span>"
        self.upload_results.value = _places_table(places)
        self._draw_localized(places)
        return places

    def _draw_localized(self, places: list) -> None:
        """The photo's top places as pink crosses on both panels; the zoom moves to the best one."""
        r = self.current
        o = _origin(r)
        pts = [p for p in places if p.east is not None]
        with self.map.batch_update():
            self.map.data = tuple(t for t in self.map.data if t.name != LOCALIZED_NAME)
            for panel, (xa, ya) in enumerate(PANELS):
                self.map.add_trace(dict(type="scatter", mode="markers+text", name=LOCALIZED_NAME, xaxis=xa, yaxis=ya,
                                        x=[p.east - o[0] for p in pts], y=[p.north - o[1] for p in pts],
                                        text=[f"L{p.rank}" for p in pts], textposition="bottom center",
                                        legendgroup=LOCALIZED_NAME, showlegend=panel == 1,
                                        marker=dict(size=15, symbol="x", color="#ff00aa")))
            box = zoom_box(r, np.array([pts[0].east, pts[0].north])) if pts else None
            if box:
                self.map.layout.xaxis2.range, self.map.layout.yaxis2.range = box


def _html(text: str) -> str:
    import html

    return html.escape(text)


def _places_table(places: list) -> str:
    rows = "".join(f"<tr><td>{p.rank}</td><td>{_html(str(p.place))}</td><td>{p.score:.3f}</td>"
                   f"<td>{'' if p.east is None else f'{p.east:.1f}'}</td><td>{'' if p.north is None else f'{p.north:.1f}'}</td></tr>"
                   for p in places)
    return ("<table style='font-size:12px'><tr><th>rank</th><th>place</th><th>score</th><th>UTM east</th>"
            f"<th>UTM north</th></tr>{rows}</table>")


# --------------------------------------------------------------------------- notebook 05 helpers

def checkpoint_or_fallback(profile: str, ds: Any, phase1: dict[str, Any], fallback_epochs: int,
                           announce: Callable[[str], None] = print) -> tuple[Path, bool]:
    """(checkpoint, whether it is a fallback): notebook 02's (`paths.phase1_checkpoint`, the rule every
    reader uses), else a `phase1` model trained here for
    `fallback_epochs` epochs (announced, since its retrievals are weaker), so the explorer shows
    something when run alone. With no checkpoint and `fallback_epochs` 0, a FileNotFoundError says
    how to get one."""
    from ..training.crossview import phase1_model
    from ..training.crossview import train_crossview
    from ..paths import phase1_checkpoint, profile_dir
    from ..training.loop import seed_everything
    from ..training.multiview import TrainConfig

    checkpoint = phase1_checkpoint(profile)
    if checkpoint is not None:
        return checkpoint, False
    if fallback_epochs <= 0:
        raise FileNotFoundError(f"no Phase 1 checkpoint for profile {profile!r}: run notebook 02 first "
                                "(./run_all.sh --only 02), or set the explorer section's fallback_epochs > 0")
    announce(f"**Notebook 02 has not run for profile `{profile}`**: no checkpoint in "
             f"`{profile_dir(profile, 'checkpoints') / 'phase1'}`. Training a fallback model for "
             f"{fallback_epochs} epoch(s) so that this notebook can show something; "
             "its retrievals are weaker than notebook 02's.")
    seed_everything(phase1["seed"])
    fit = train_crossview(phase1_model(phase1), ds,
                          TrainConfig(epochs=fallback_epochs, batch_size=phase1["batch_size"], lr=phase1["lr"],
                                      device=phase1["device"], seed=phase1["seed"]),
                          profile_dir(profile, "checkpoints") / "explorer_fallback",
                          image_size=phase1["image_size"], eval_directions=())
    return fit.last_path, True


def untrained_like(model: Any, seed: int) -> Any:
    """The same architecture as `model` at a seeded random init: the floor its retrievals are read against."""
    from ..models import create_model
    from ..training.loop import seed_everything

    seed_everything(seed)
    return create_model(model.config["name"], **{k: v for k, v in model.config.items() if k != "name"})


def add_vpr_runs(results: ExplorerResults, runs: dict[str, Any], vpr_data: Any, *, query_folder: str | None,
                 cache: Any, image_size: int, device: str, k: int, regions: dict[str, str], source: str,
                 profile: str, seed: int | None, checkpoint: str | Path) -> bool:
    """The street branch of each run as place recognition (query→database of the VPR test split),
    added to `results` and recorded as `<run>-street-branch`; False when there is no test split.
    A dry run embeds a few images of each side."""
    from .. import dryrun
    from .dataroots import vpr_splits
    from .geoclass import resolve_query_folders
    from ..data.datasets import load_dataset
    from ..data.transforms import Preprocess
    from ..evaluation.embedding import embed
    from ..results import Result, record

    if vpr_data is None or "test" not in vpr_splits(vpr_data.root):
        return False
    folder = next(iter(resolve_query_folders(vpr_data.root, "test", query_folder).values()))
    vpr = load_dataset("vpr", vpr_data.root, split="test", query_folder=folder)
    db_items, q_items = dryrun.items(vpr.select(role="gallery")), dryrun.items(vpr.select(role="query"))
    spec = Preprocess(int(image_size))  # the street branch as Phase 1 evaluates it
    for run, net in runs.items():
        db_emb = embed(net, db_items, view="street", preprocess=spec, device=device, cache=cache)
        q_emb = embed(net, q_items, view="street", preprocess=spec, device=device, cache=cache)
        results.add_vpr(run, q_items, db_items, q_emb, db_emb, k=k,
                        query_regions=[regions.get(str(it.path.resolve())) for it in q_items],
                        db_regions=[regions.get(str(it.path.resolve())) for it in db_items])
        found = results.get(run, "query→database")
        record(Result(found.metrics, found.protocol, preprocess=spec.to_dict()), source=source, task="vpr",
               dataset=vpr_data.dataset, split="test", views=("query", "database"), model=f"{run}-street-branch",
               profile=profile, seed=seed,
               config={"checkpoint": str(checkpoint), "image_size": image_size, "queries": len(q_items),
                       "database": len(db_items)})
    return True


def records_summary(records: Iterable[dict[str, Any]], dataset: str) -> Any:
    """This dataset's Phase 1 retrieval records (every notebook's `phase1*` models), the last per
    (source, model, direction): what the runs measured, beside what the explorer shows."""
    from ..records import records_table

    recs = [r for r in records if r.get("task") in ("crossview", "vpr") and r.get("dataset") == dataset
            and str(r.get("model") or "").startswith("phase1")]
    table = records_table(recs, ("R@1", "R@5", "R@10", "AP"))
    if table.empty:
        return table
    table.insert(0, "source", [r.get("_source") for r in recs])
    table = table.reindex(columns=["source", "model", "direction", "protocol", "R@1", "R@5", "R@10", "AP"])
    return table.drop_duplicates(["source", "model", "direction"], keep="last")


def world_regions(export_root: str | os.PathLike) -> dict[str, str]:
    """Absolute image path → region, from a synthetic export's `world.json` ({} for real data)."""
    import json

    export_root = Path(export_root)
    meta = export_root / "world.json"
    if not meta.exists():
        return {}
    doc = json.loads(meta.read_text(encoding="utf-8"))
    return {str((export_root / im["path"]).resolve()): str(im["region"])
            for im in doc.get("images", []) if im.get("region") is not None}


def summary_table(results: ExplorerResults):
    """One row per (run, direction): sizes and the metrics the retrievals were scored with."""
    import pandas as pd

    rows = [{"run": r.run, "direction": r.direction, "protocol": r.protocol, "queries": r.n_queries,
             "gallery": len(r.gallery), **{m: r.metrics.get(m) for m in ("R@1", "R@5", "R@10", "AP")},
             "top-1 wrong": len(r.wrong())} for r in results]
    return pd.DataFrame(rows)


def error_profile(r: Retrievals) -> dict[str, float]:
    """How the top-1 goes wrong: in the right region or not, and how far the top-1 lands."""
    wrong = r.wrong()
    d1 = r.distances()[:, 0]
    same = [r.gallery.regions[r.index[q, 0]] == r.queries.regions[q] for q in wrong]
    finite = d1[np.isfinite(d1)]
    return {"queries": r.n_queries, "wrong": len(wrong),
            "wrong_same_region_pct": 100.0 * float(np.mean(same)) if len(same) else float("nan"),
            "median_top1_m": float(np.median(finite)) if len(finite) else float("nan"),
            "within_25m_pct": 100.0 * float(np.mean(finite <= 25.0)) if len(finite) else float("nan")}


def findings(results: ExplorerResults, run: str) -> list[str]:
    """Markdown bullets from the measured numbers, one per direction of `run`."""
    lines = []
    for d in results.directions(run):
        r, e = results.get(run, d), error_profile(results.get(run, d))
        r1 = r.metrics.get("R@1", 100.0 * (1 - e["wrong"] / max(1, e["queries"])))
        where = (f"{e['wrong_same_region_pct']:.0f}% of the wrong top-1s are in the query's own region"
                 if e["wrong"] else "no top-1 is wrong")
        lines.append(f"- **{d}** ({r.protocol}): R@1 {r1:.1f}% over {e['queries']} queries; {where}; "
                     f"the top-1 lands a median {e['median_top1_m']:.0f} m from the truth "
                     f"({e['within_25m_pct']:.0f}% within 25 m).")
    return lines
