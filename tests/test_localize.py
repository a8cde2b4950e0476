"""`geolib.localize`: a photo in, the top-k places out; odd uploads give sentences, not tracebacks."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, png_header
from PIL import Image

import geolib
from geolib.checkpoint import save_checkpoint
from geolib.data.datasets import ImageItem, default_transform
from geolib.data.images import ImageError
from geolib.evaluation.embedding import embed
from geolib.models import config_hash, create_model
from geolib.retrieval import localize as loc
from geolib.retrieval.index import GalleryIndex

TINY = dict(img_size=32, embed_dim=16, fusion_dim=16,
            backbone_options={"window_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]})


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _street_gallery(root: Path) -> list[ImageItem]:
    """Five places, two street photos each (a drone-like gallery: several images per place)."""
    items = []
    for p in range(1, 6):
        for j in range(2):
            path = make_image(root / f"{p:04d}" / f"street-{j}.jpg", seed=10 * p + j, size=(48, 40))
            items.append(ImageItem(path, "street", "test", "gallery", p, utm_east=480000.0 + 30 * p,
                                   utm_north=5020000.0 + 7 * p, meta={"region": "0"}))
    return items


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Phase 1 model saved as notebook 02 saves it, and a street gallery index naming it."""
    import torch

    root = tmp_path_factory.mktemp("localize")
    torch.manual_seed(0)
    model = create_model("phase1-cpu", **TINY).eval()
    bundle = torch.nn.ModuleDict({"model": model})  # what train_crossview saves: the network under "model."
    ckpt = save_checkpoint(root / "ck" / "best", bundle, epoch=1, config={"extra": {"model": model.config}})
    items = _street_gallery(root / "gallery")
    emb = embed(model, items, view="street")
    index = GalleryIndex.build(emb, [it.path for it in items], places=[it.label for it in items],
                               coords=[[it.utm_east, it.utm_north] for it in items], model="phase1",
                               config_hash=config_hash(model.config),
                               extra={"view": "street", "checkpoint": str(ckpt.with_suffix(""))})
    index_dir = index.save(root / "index" / "phase1_street")
    return {"model": model, "items": items, "index_dir": index_dir, "ckpt": ckpt}


def test_a_photo_of_a_gallery_place_comes_back_first_with_its_coordinates(saved):
    for it in saved["items"][::2]:
        places = geolib.localize(it.path, saved["index_dir"], k=3)  # the model comes from the index's checkpoint
        assert places[0].place == it.label and places[0].rank == 1
        assert (places[0].east, places[0].north) == pytest.approx((it.utm_east, it.utm_north))
        assert places[0].score == pytest.approx(1.0, abs=1e-4)
        assert len({p.place for p in places}) == 3 and [p.rank for p in places] == [1, 2, 3]
        assert all(a.score >= b.score for a, b in zip(places, places[1:]))


def test_a_gallery_embedded_with_flip_tta_is_queried_with_flip_tta(saved, tmp_path):
    """Notebook 02 embeds its gallery with flip TTA and says so in the index; `localize` follows."""
    items, model = saved["items"], saved["model"]
    emb = embed(model, items, view="street", flip=True)
    index = GalleryIndex.build(emb, [it.path for it in items], places=[it.label for it in items],
                               model="phase1", config_hash=config_hash(model.config), extra={"flip": True})
    it = items[3]
    flipped = loc.localize(it.path, index, model=model, k=1)[0]
    assert flipped.place == it.label and flipped.score == pytest.approx(1.0, abs=1e-5)
    index.meta["extra"]["flip"] = False  # the same gallery queried without flip no longer matches itself
    assert loc.localize(it.path, index, model=model, k=1)[0].score < 1.0 - 1e-4


def test_bytes_and_pil_images_give_the_same_answer_as_the_path(saved):
    it = saved["items"][4]
    by_path = loc.localize(it.path, saved["index_dir"], model=saved["model"], k=2)
    by_bytes = loc.localize(it.path.read_bytes(), saved["index_dir"], model=saved["model"], k=2)
    by_pil = loc.localize(Image.open(it.path), GalleryIndex.load(saved["index_dir"]), model=saved["model"], k=2)
    assert [p.place for p in by_path] == [p.place for p in by_bytes] == [p.place for p in by_pil]
    assert by_path[0].score == pytest.approx(by_bytes[0].score, abs=1e-6)


def test_geolib_localize_stays_the_function_after_the_module_is_imported():
    import geolib.retrieval.localize  # noqa: F401

    assert geolib.localize is loc.localize and callable(geolib.localize)


def test_a_model_that_did_not_build_the_index_is_refused(saved):
    other = create_model("phase1-cpu", **{**TINY, "embed_dim": 8})
    with pytest.raises(ValueError, match="did not build this index"):
        loc.localize(saved["items"][0].path, saved["index_dir"], model=other)
    with pytest.raises(FileNotFoundError, match="notebook 02"):
        loc.localize(saved["items"][0].path, saved["index_dir"], model=saved["ckpt"].parent / "missing")


@pytest.mark.parametrize("mode, note", [("L", "grayscale"), ("CMYK", "CMYK"), ("RGBA", "transparency"),
                                        ("P", "palette")])
def test_odd_modes_are_converted_with_a_note(mode, note):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img, notes = loc.decode_upload(_png(rgb.convert(mode), fmt), f"photo.{fmt.lower()}")
    assert img.mode == "RGB" and img.size == (40, 30)
    assert len(notes) == 1 and note in notes[0]


def test_bad_uploads_name_the_problem(monkeypatch):
    with pytest.raises(ImageError, match="empty"):
        loc.decode_upload(b"", "a.jpg")
    with pytest.raises(ImageError, match="not an image"):
        loc.decode_upload(b"%PDF-1.4 hello", "scan.pdf")
    with pytest.raises(ImageError, match=r"panorama.png: 13500×13500 pixels is too large \(limit 80,000,000"):
        loc.decode_upload(png_header(13500, 13500), "panorama.png")  # past Pillow's own bomb error
    with pytest.raises(ImageError, match="pano.png: 9000×9000 pixels is too large"):
        loc.decode_upload(png_header(9000, 9000), "pano.png")  # Pillow would only warn
    jpeg = _png(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")
    with pytest.raises(ImageError, match="truncated.jpg: unreadable or truncated"):
        loc.decode_upload(jpeg[: len(jpeg) // 2], "truncated.jpg")
    monkeypatch.setattr(loc, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(ImageError, match="too large"):
        loc.decode_upload(jpeg, "big.jpg")


def test_explorer_upload_localizes_or_explains(saved, tmp_path):
    from geolib.apps import explorer as ex
    from geolib.evaluation.crossview import Embedded, Evaluation, score_direction

    items = saved["items"]
    emb = embed(saved["model"], items, view="street")
    qs, gs = Embedded(items[::2], emb[::2]), Embedded(items[1::2], emb[1::2])
    ev = Evaluation(sets={("query", "street"): qs, ("gallery", "satellite"): gs})
    ev.results["street→satellite"] = score_direction(qs, gs, "street", "satellite")
    app = ex.explore(ex.ExplorerResults.from_evaluation("tiny", ev, k=3), index=saved["index_dir"],
                     model=saved["model"], k=3)
    assert not app.upload.disabled
    cmyk = Image.open(items[2].path).convert("CMYK")
    places = app.handle_upload(_png(cmyk, "JPEG"), "cmyk.jpg")
    assert places and "CMYK image converted to RGB" in app.upload_message.value
    assert f"<td>{places[0].place}</td>" in app.upload_results.value
    assert sum(t.name == ex.LOCALIZED_NAME for t in app.map.data) == 2
    for data, name, words in ((b"GIF89a broken", "x.gif", "not an image"),
                              (png_header(12000, 9000), "huge.png", "too large"),
                              (b"", "empty.jpg", "empty")):
        assert app.handle_upload(data, name) is None
        assert words in app.upload_message.value and "Traceback" not in app.upload_message.value
    import datetime

    app.upload.value = ({"name": "up.png", "type": "image/png", "size": 4, "content": memoryview(b"nope"),
                         "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)},)
    assert "not an image" in app.upload_message.value


def test_batch_query_and_localize_are_one_path(saved):
    """A batch of transformed images goes through `localize`'s model check and embedding
    (`model_for`, `embed_tensors`) and the index's search: same scores, same answer."""
    import torch

    from geolib.data.images import load_image
    from geolib.evaluation.embedding import embed_tensors

    index = GalleryIndex.load(saved["index_dir"])
    picked = saved["items"][1::3]
    batch = torch.stack([default_transform(32)(load_image(it.path)) for it in picked])
    model = create_model("phase1-cpu", **TINY)
    model.load_state_dict(saved["model"].state_dict())
    model.train()
    flip = loc.index_flip(index)
    hits = index.query(embed_tensors(loc.model_for(index, model), batch, "street", flip), 3)
    assert model.training  # left as it was
    no_model = index.query(embed_tensors(loc.model_for(index), batch, "street", flip), 3)  # the index's checkpoint
    for it, row, row2 in zip(picked, hits, no_model):
        places = loc.localize(it.path, index, model=saved["model"], k=1)
        assert row[0].path == places[0].path == str(it.path) and row[0].place == places[0].place == it.label
        assert row[0].score == pytest.approx(places[0].score, abs=1e-6) and row[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.gallery_index for h in row] == [h.gallery_index for h in row2]
    other = create_model("phase1-cpu", **{**TINY, "embed_dim": 8})
    with pytest.raises(ValueError, match="did not build this index"):
        loc.model_for(index, other)


def test_photo_paths_that_are_not_photos_say_what_they_are(saved, tmp_path, monkeypatch):
    index = saved["index_dir"]
    with pytest.raises(ImageError, match="nope.jpg: file not found") as err:
        loc.localize(tmp_path / "nope.jpg", index, model=saved["model"])
    assert "dataset root" not in str(err.value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageError, match=f"resolved against the current folder {tmp_path}"):
        loc.localize("nope.jpg", index, model=saved["model"])
    with pytest.raises(ImageError, match="URLs are not supported; download the photo first"):
        loc.localize("https://example.org/photo.jpg", index, model=saved["model"])
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageError, match="x.jpg: is a folder, not an image file"):
        loc.localize(tmp_path / "x.jpg", index, model=saved["model"])
    big = tmp_path / "big.png"
    big.write_bytes(png_header(15000, 15000))
    with pytest.raises(ImageError, match="big.png: 15000×15000 pixels is too large"):
        loc.localize(big, index, model=saved["model"])


@pytest.mark.parametrize("name, notebook", [("phase1_street", "notebook 05"), ("phase1_drone", "notebook 02"),
                                            ("phase1_satellite", "notebook 02")])
def test_a_missing_index_names_the_notebook_that_builds_it(saved, tmp_path, monkeypatch, name, notebook):
    photo = saved["items"][0].path
    with pytest.raises(FileNotFoundError, match=notebook) as err:
        loc.localize(photo, tmp_path / "index" / name)
    assert "current folder" not in str(err.value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{notebook}.*resolved against the current folder {tmp_path}"):
        loc.localize(photo, Path("index") / name)


def test_a_moved_outputs_folder_still_localizes(saved, tmp_path, monkeypatch):
    """The index names its checkpoint relative to itself, so copying `outputs/` elsewhere keeps it working."""
    import json
    import shutil

    old = tmp_path / "old" / "outputs"
    monkeypatch.setenv("GEOLIB_OUTPUTS", str(old))
    ck = old / "tiny" / "checkpoints"
    shutil.copytree(saved["ckpt"].parent, ck)
    index = GalleryIndex.load(saved["index_dir"])
    index.meta["extra"]["checkpoint"] = str(ck / "best")
    index.save(old / "tiny" / "index" / "phase1_street")
    stored = json.loads((old / "tiny" / "index" / "phase1_street" / "index.json").read_text())
    assert stored["extra"]["checkpoint"] == "../../checkpoints/best"
    new = tmp_path / "elsewhere" / "outputs"
    shutil.move(str(old), str(new))
    monkeypatch.setenv("GEOLIB_OUTPUTS", str(new))
    loaded = GalleryIndex.load(new / "tiny" / "index" / "phase1_street")
    assert loaded.meta["extra"]["checkpoint"] == str(new / "tiny" / "checkpoints" / "best")
    it = saved["items"][4]
    places = loc.localize(it.path, new / "tiny" / "index" / "phase1_street", k=1)
    assert places[0].place == it.label and places[0].score == pytest.approx(1.0, abs=1e-4)
