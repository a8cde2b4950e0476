"""Notebook 05's gallery indexes and its new-photo localization benchmark.

`gallery_index` reuses the index notebook 02 saved for a gallery only when that index was built by
the model in hand (`localize.model_for` checks the config hash): an index of another model
would answer with the wrong embedding space and nothing would look wrong. Otherwise it indexes the
test gallery with the model and saves it, so the next run loads it.

`photo_benchmark` asks each gallery index where photos that no gallery or query folder holds were
taken (the synthetic world renders a new street photo of every test query place; on real data the
street queries are used and the street gallery, which holds them, is left out), counting the true
place first and in the top 5 over distinct gallery places, as `localize` answers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .. import dryrun
from ..results import Result, record

if TYPE_CHECKING:
    from ..data.datasets import GeoDataset, ImageItem
    from ..evaluation.cache import EmbeddingCache
    from ..retrieval.index import GalleryIndex

PROTOCOL_NEW_PHOTO = "localize-new-street-photo"


def gallery_index(index_dir: str | Path, view: str, model: Any, ds: "GeoDataset", *, cache: "EmbeddingCache",
                  image_size: int, device: str = "cpu", flip: bool = False, checkpoint: str | Path | None = None,
                  model_name: str = "phase1") -> "GalleryIndex":
    """The saved index of `ds`'s test `view` gallery in `index_dir` when `model` built it, else one
    built from `model`'s embeddings (through `cache`) and saved there. A dry run indexes a few images."""
    from ..data.transforms import Preprocess
    from ..evaluation.embedding import embed
    from ..retrieval.index import GalleryIndex
    from ..retrieval.localize import model_for
    from ..models import config_hash

    index_dir = Path(index_dir)
    try:
        index = GalleryIndex.load(index_dir)
        model_for(index, model)
        return index
    except FileNotFoundError:  # notebook 02 saves the drone and satellite indexes; the street one is made here
        print(f"no saved {view} index in {index_dir}: indexing the {view} gallery with the loaded model")
    except ValueError as err:
        print(f"{index_dir}: {str(err).splitlines()[0]}\n-> indexing the {view} gallery with the loaded model")
    items = dryrun.items(ds.select(view=view, split="test", role="gallery"))
    if not items:
        raise ValueError(f"{ds.root}: no {view} gallery image in the test split to index; choose a view the "
                         f"dataset has (localize_view: street, drone or satellite)")
    emb = embed(model, items, view=view, preprocess=Preprocess(int(image_size)), device=device, flip=flip, cache=cache)
    index = GalleryIndex.from_items(emb, items, model=model_name, config_hash=config_hash(model.config),
                                    extra={"view": view, "checkpoint": str(checkpoint), "flip": flip})
    index.save(index_dir)
    return index


def save_gallery_indexes(ev: Any, views: Sequence[str], model_config: Mapping[str, Any], checkpoint: str | Path,
                         index_dir: str | Path, flip: bool = False, model_name: str = "phase1") -> dict[str, Path]:
    """Save a FAISS index of each test gallery view of a cross-view `Evaluation` (its embeddings, no
    re-embedding) as `<index_dir>/<model_name>_<view>`, naming the model config and checkpoint that
    made them, so `localize` and notebook 05 refuse an index of another model."""
    from ..models import config_hash
    from ..retrieval.index import GalleryIndex

    saved = {}
    for view in views:
        gs = ev.sets[("gallery", view)]
        saved[view] = GalleryIndex.from_items(gs.emb, gs.items, model=model_name, config_hash=config_hash(model_config),
                                              extra={"view": view, "checkpoint": str(checkpoint), "flip": flip}
                                              ).save(Path(index_dir) / f"{model_name}_{view}")
    return saved


def benchmark_photos(ds: "GeoDataset", export: str | Path | None, preset: str, seed: int,
                     out: str | Path) -> tuple[list["ImageItem"], bool]:
    """(photos, whether they are new renders): one new street photo of every test query place of
    the synthetic world, rendered into `out`, or, on real data, the dataset's street queries."""
    queries = ds.select(view="street", split="test", role="query")
    if export is None:
        return dryrun.items(queries), False
    from ..world.export import fresh_street_photos
    from ..world.generate import generate, preset_params

    world = generate(preset_params(preset), seed)
    return fresh_street_photos(world, sorted({it.label for it in queries}), out), True


@dataclasses.dataclass
class PhotoBenchmark:
    """Where each photo was placed by each gallery, and the rates per gallery."""

    located: Any   # pandas: one row per (gallery, photo): true place, its rank (None: not in the top-k), answer
    rate: Any      # pandas, indexed by gallery: "first" and "top5" in percent
    photos: list[Any]
    new: bool
    preprocess: dict[str, Any] | None = None  # how the photos were embedded (`Preprocess.to_dict()`)

    def display_table(self) -> Any:
        return self.rate.rename(columns={"first": "true place first (%)", "top5": "in the top 5 (%)"})


def photo_benchmark(photos: Sequence["ImageItem"], photo_emb: np.ndarray, indexes: Mapping[str, "GalleryIndex"],
                    k: int, new: bool = True) -> PhotoBenchmark:
    """Each photo's embedding answered by every index with the top-k distinct places
    (`localize.top_places`); a photo's rank is where its true place comes, None past k."""
    import pandas as pd

    from ..retrieval.localize import top_places

    if len(photos) != len(photo_emb):
        raise ValueError(f"{len(photos)} photos but {len(photo_emb)} embeddings: embed every photo once")
    rows = []
    for view, index in indexes.items():
        for ph, emb in zip(photos, np.asarray(photo_emb)):
            answer = top_places(index, emb[None], k)
            rank = next((a.rank for a in answer if a.place == ph.label), None)
            rows.append({"gallery": view, "photo": Path(ph.path).name, "place": ph.label, "rank": rank,
                         "answer": answer[0].place, "score": answer[0].score})
    located = pd.DataFrame(rows, columns=["gallery", "photo", "place", "rank", "answer", "score"])
    rate = (located.assign(first=located["rank"].eq(1), top5=located["rank"].le(5))
            .groupby("gallery", sort=False)[["first", "top5"]].mean().mul(100).round(1))
    return PhotoBenchmark(located, rate, list(photos), new)


def write_benchmark_records(bench: PhotoBenchmark, source: str, *, dataset: str, profile: str, seed: int | None,
                            config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One `crossview` record per gallery: R@1 and R@5 of the true place among distinct places."""
    return [record(r, source=source, dataset=dataset, model="phase1", profile=profile, seed=seed,
                   config={**config, "photos": len(bench.photos), "counted_over": "distinct gallery places"})
            for r in benchmark_results(bench)]


def benchmark_results(bench: PhotoBenchmark) -> list[Result]:
    """The benchmark as one `Result` per gallery (per photo: the true place's rank, NaN past k)."""
    out = []
    for view, row in bench.rate.iterrows():
        ranks = bench.located.loc[bench.located["gallery"] == view, "rank"].astype(float).to_numpy()
        out.append(Result({"R@1": float(row["first"]), "R@5": float(row["top5"])}, PROTOCOL_NEW_PHOTO,
                          {"rank": ranks}, split="test", query_view="street-new" if bench.new else "street",
                          gallery_view=str(view), task="crossview", preprocess=bench.preprocess))
    return out


def run_photo_benchmark(ds: "GeoDataset", indexes: Mapping[str, "GalleryIndex"], model: Any, *,
                        export: str | Path | None, preset: str, seed: int, photos_dir: str | Path,
                        cache: "EmbeddingCache", image_size: int, device: str, flip: bool, k: int, source: str,
                        profile: str, dataset: str, checkpoint: str | Path) -> PhotoBenchmark:
    """Notebook 05's new-photo localization: the photos (`benchmark_photos`), embedded once as
    `localize` embeds them, answered by every gallery that does not hold them, and recorded."""
    photos, new = benchmark_photos(ds, export, preset, seed, photos_dir)
    galleries = {v: ix for v, ix in indexes.items() if new or v != "street"}
    from ..data.transforms import Preprocess
    from ..evaluation.embedding import embed

    spec = Preprocess(int(image_size))  # as `localize` embeds a photo (the Phase 1 model's own)
    emb = np.asarray(embed(model, photos, view="street", preprocess=spec, device=device, flip=flip, cache=cache))
    bench = photo_benchmark(photos, emb, galleries, k, new)
    bench.preprocess = spec.to_dict()
    write_benchmark_records(bench, source, dataset=dataset, profile=profile, seed=seed,
                            config={"checkpoint": str(checkpoint), "k": k, "flip": flip})
    return bench


@dataclasses.dataclass
class Localized:
    """`localize`'s answer for one photo, and where its true place came."""

    photo: Any
    answer: list[Any]
    truth_rank: int | None

    def table(self) -> Any:
        import pandas as pd

        return pd.DataFrame([vars(a) for a in self.answer]).drop(columns="path")

    def figure(self) -> Any:
        from .plots import retrieval_strips

        a = self.answer
        return retrieval_strips([self.photo.path], [[p.path for p in a]],
                                np.array([[p.place == self.photo.label for p in a]]),
                                scores=np.array([[p.score for p in a]]), titles=[[f"place {p.place}" for p in a]],
                                row_labels=[f"new photo, place {self.photo.label}"])

    def sentence(self, gallery: str, k: int) -> str:
        return (f"photo {Path(self.photo.path).name} of place {self.photo.label}, against the {gallery} gallery: "
                f"the true place is " + (f"rank {self.truth_rank}" if self.truth_rank else f"not in the top-{k}"))


def localize_photo(photo: "ImageItem", index: "GalleryIndex", model: Any, k: int) -> Localized:
    """`localize` on one photo file, as a user calls it."""
    from ..retrieval.localize import localize

    answer = localize(photo.path, index, model=model, k=k)
    return Localized(photo, answer, next((a.rank for a in answer if a.place == photo.label), None))


def benchmark_findings(bench: PhotoBenchmark, example: Localized, gallery: str, k: int) -> list[str]:
    """Markdown bullets: the example photo's answer, and the rates over every photo per gallery."""
    truth = (f"the true place comes at rank {example.truth_rank} of {k}." if example.truth_rank
             else f"the true place is not in the top-{k}.")
    best = example.answer[0]
    rates = bench.rate
    return [f"- Localizing the new street photo `{Path(example.photo.path).name}` (place {example.photo.label}) "
            f"against the {gallery} gallery: {truth} The best answer is place {best.place} (score {best.score:.3f}).",
            f"- Over all {len(bench.photos)} new street photos, `localize` puts the true place first for "
            + ", ".join(f"{row['first']:.1f}% against the {view} gallery" for view, row in rates.iterrows())
            + " (top 5: " + ", ".join(f"{row['top5']:.1f}%" for _, row in rates.iterrows()) + ")."]
