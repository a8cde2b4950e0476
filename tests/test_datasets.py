import numpy as np
import pytest
import scipy.io

from conftest import make_image, vpr_name
from geolib.data.images import load_image
from geolib.data.datasets import (DatasetError, default_transform, labels_of, load_dataset,
                             parse_vpr_name, quick_image_check)


def test_university_clean_tree(university_root):
    ds = load_dataset("university1652", university_root)
    assert ds.errors == []
    train_drone = ds.select(view="drone", split="train")
    assert sorted({it.label for it in train_drone}) == [1, 2]
    assert {it.path.suffix for it in train_drone} == {".jpg", ".png"}
    assert len(ds.select(view="street", split="train")) == 4  # incl. grayscale and the '@' name
    g = ds.select(role="gallery", view="satellite")
    q = ds.select(role="query", view="satellite")
    assert sorted({it.label for it in g}) == [3, 4, 5]  # 5 is a distractor: no query has it
    assert sorted({it.label for it in q}) == [3, 4]
    s = ds.summary()
    assert s["groups"]["test/gallery/satellite"] == {"images": 3, "classes": 3}
    assert s["classes_without_images"] == []


def test_university_broken_tree_lists_every_problem(broken_university_root):
    with pytest.raises(DatasetError) as info:
        load_dataset("university1652", broken_university_root)
    text = str(info.value)
    assert "cut.jpg" in text and "truncated" in text
    ds = info.value.dataset
    warnings = [str(p) for p in ds.warnings]
    assert any("street/0001" in w and "empty class folder" in w for w in warnings)
    assert any("notes.txt" in w for w in warnings)
    assert ds.summary()["classes_without_images"] == ["street/0001"]


def test_university_locations_and_bad_folder_names(university_root):
    (university_root / "locations.csv").write_text(
        "label,utm_east,utm_north,utm_zone,lat,lon,region\n3,500100.5,4600200.0,33T,41.5,12.1,r1\n")
    (university_root / "test" / "gallery_drone" / "abc").mkdir()
    ds = load_dataset("university1652", university_root, strict=False)
    it = ds.select(role="query", view="drone")[0]
    assert (it.label, it.utm_east, it.utm_zone, it.meta["region"]) == (3, 500100.5, "33T", "r1")
    assert any("abc" in str(p) and "does not parse" in str(p) for p in ds.errors)


def test_query_class_without_gallery_is_reported(university_root):
    make_image(university_root / "test" / "query_street" / "0009" / "q.jpg")
    ds = load_dataset("university1652", university_root)
    assert any("0009" in p.path and "no gallery item" in p.message for p in ds.warnings)


def test_missing_root_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cvusa", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset("kitti", tmp_path)
    with pytest.raises(DatasetError, match="no train/ or test/"):
        load_dataset("university1652", tmp_path)


def test_cvusa_pairs_and_missing_split_file(tmp_path):
    root = tmp_path / "CVUSA"
    rows = []
    for i in range(3):
        make_image(root / "bingmap" / "19" / f"{i:07d}.jpg", seed=i)
        make_image(root / "streetview" / "panos" / f"{i:07d}.jpg", seed=10 + i)
        rows.append(f"bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg,streetview/annotations/{i:07d}.png")
    (root / "splits").mkdir()
    (root / "splits" / "train-19zl.csv").write_text("\n".join(rows[:2]) + "\n")
    with pytest.raises(DatasetError, match="val-19zl.csv.*missing split file"):
        load_dataset("cvusa", root)
    (root / "splits" / "val-19zl.csv").write_text(rows[2] + "\nbroken-row\n")
    ds = load_dataset("cvusa", root, strict=False)
    assert len(ds.pairs) == 3 and len(ds.errors) == 1 and ":2" in ds.errors[0].path
    q, g = ds.pairs[2]
    assert ds.items[q].view == "panorama" and ds.items[g].view == "satellite"
    assert ds.items[q].label == ds.items[g].label and ds.items[q].split == "val"


def test_cvact_mat(tmp_path):
    root = tmp_path / "CVACT"
    ids = ["a1", "b2", "c3"]
    for i, pid in enumerate(ids):
        make_image(root / "ANU_data_small" / "streetview" / f"{pid}_grdView.jpg", seed=i)
        make_image(root / "ANU_data_small" / "satview_polish" / f"{pid}_satView_polish.jpg", seed=5 + i)
    scipy.io.savemat(root / "ACT_data.mat", {
        "panoIds": np.array(ids, dtype=object),
        "utm": np.array([[690000.0, 6090000.0], [690010.0, 6090020.0], [690500.0, 6090900.0]]),
        "trainSet": {"trainInd": np.array([[1], [2]])},
        "valSet": {"valInd": np.array([[3]])}})
    ds = load_dataset("cvact", root)
    assert len(ds.pairs) == 3
    val = ds.select(split="val", view="panorama")
    assert len(val) == 1 and val[0].path.name == "c3_grdView.jpg" and val[0].utm_north == 6090900.0


def test_vigor_semi_positives(tmp_path):
    root = tmp_path / "VIGOR"
    for city in ("Chicago", "SanFrancisco"):
        sats = [f"satellite_41.{i}_-87.{i}.png" for i in range(5)]
        for j, s in enumerate(sats):
            make_image(root / city / "satellite" / s, seed=j)
        pano = "p1,41.05,-87.05,.jpg"
        make_image(root / city / "panorama" / pano, seed=9)
        (root / "splits" / city).mkdir(parents=True)
        (root / "splits" / city / "satellite_list.txt").write_text("\n".join(sats) + "\n")
        row = " ".join([pano] + [f"{s} 1.0 -2.0" for s in sats[1:5]])
        (root / "splits" / city / "pano_label_balanced.txt").write_text(row + "\n")
    ds = load_dataset("vigor", root, split="test", mode="cross")
    q = ds.select(role="query")
    assert len(q) == 2 and len(ds.select(role="gallery")) == 10
    assert ds.items[q[0].label].path.name == "satellite_41.1_-87.1.png"
    assert len(q[0].meta["semi_positives"]) == 3 and q[0].lat == 41.05


def test_vpr_name_field_by_field():
    name = "@0543256.96@4178906.70@10@S@037.77435@-122.51700@pano7@t3@270.5@0@@2.5@201907@night@.jpg"
    f = parse_vpr_name("/data/a@b/" + name)  # folders with '@' must not shift the fields
    assert (f["utm_east"], f["utm_north"], f["utm_zone"], f["utm_letter"]) == (543256.96, 4178906.70, "10", "S")
    assert (f["lat"], f["lon"], f["pano_id"], f["tile"]) == (37.77435, -122.517, "pano7", "t3")
    assert (f["heading"], f["pitch"], f["roll"], f["height"]) == (270.5, 0.0, None, 2.5)
    assert (f["timestamp"], f["note"], f["n_fields"]) == ("201907", "night", 14)
    short = parse_vpr_name("@1.5@2.5@@.jpg")
    assert short["heading"] is None and short["n_fields"] == 3
    with pytest.raises(ValueError, match="UTM"):
        parse_vpr_name("@@2.5@.jpg")
    with pytest.raises(ValueError, match="heading"):
        parse_vpr_name("@1@2@@@@@@@north@.jpg")


def test_vpr_query_folder_is_a_parameter(vpr_root):
    with pytest.raises(DatasetError, match="queries_v1"):
        load_dataset("vpr", vpr_root)  # default 'queries' is absent; the message lists what exists
    ds = load_dataset("vpr", vpr_root, query_folder="queries_v1")
    q, db = ds.select(role="query"), ds.select(role="gallery")
    assert len(q) == 2 and len(db) == 4
    assert db[1].heading == 90.0 and q[0].heading is None and db[0].utm_zone == "33T"
    make_image(vpr_root / "test" / "queries_v1" / "no_fields.jpg")
    ds = load_dataset("vpr", vpr_root, query_folder="queries_v1", strict=False)
    assert any("no_fields.jpg" in p.path and "does not parse" in p.message for p in ds.errors)


def test_folder_dataset_and_its_images_through_the_transform(tmp_path):
    make_image(tmp_path / "a" / "x.png", mode="RGBA")
    make_image(tmp_path / "b" / "y.JPG", mode="L")
    ds = load_dataset("folder", tmp_path)
    assert len(ds.items) == 2 and labels_of(ds.items).tolist() == [-1, -1]
    x = default_transform(16)(load_image(ds.items[1].path))  # an L-mode JPEG comes out as 3 channels
    assert tuple(x.shape) == (3, 16, 16)


def test_quick_check_catches_cut_png(tmp_path):
    from conftest import truncate
    p = truncate(make_image(tmp_path / "c.png", size=(80, 80)), keep=0.6)
    assert "truncated PNG" in quick_image_check(p)
    assert quick_image_check(make_image(tmp_path / "ok.png")) is None


def test_vpr_train_split_read_whole(vpr_root):
    make_image(vpr_root / "train" / "a" / vpr_name(500000, 4600000, 0.0), seed=1)
    make_image(vpr_root / "train" / "b" / "c" / vpr_name(500010, 4600000, 30.0), seed=2)
    ds = load_dataset("vpr", vpr_root, split="train", database_folder=".", query_folder=None)
    assert len(ds.items) == 2 and {it.role for it in ds.items} == {"gallery"}


def test_gray_world_cancels_a_white_balance():
    import torch
    from geolib.data.datasets import GrayWorld

    x = torch.rand(3, 8, 8) * 0.5
    gains = torch.tensor([1.3, 1.0, 0.7]).view(3, 1, 1)
    torch.testing.assert_close(GrayWorld()(x * gains), GrayWorld()(x), rtol=1e-5, atol=1e-5)


def test_camera_gain_scales_each_channel_by_one_bounded_factor():
    import torch

    from geolib.data.datasets import CameraGain

    torch.manual_seed(0)
    x = torch.rand(3, 8, 8) * 0.5 + 0.1  # low enough that no gain clips (max gain 1.25 * 1.15)
    for _ in range(20):
        ratio = CameraGain()(x) / x
        per_channel = ratio.flatten(1)
        torch.testing.assert_close(per_channel.min(1).values, per_channel.max(1).values)
        g = per_channel[:, 0]
        assert ((g > 0.75 * 0.85 - 1e-6) & (g < 1.25 * 1.15 + 1e-6)).all()
    assert not torch.equal(CameraGain()(x), CameraGain()(x))  # drawn afresh per call


# --------------------------------------------------------------------------- University-1652 side files

def _side(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_university_side_files_are_read_only_when_given(university_root, tmp_path):
    coords = _side(tmp_path, "coords.csv", "building,utm_east,utm_north,utm_zone,lat,lon\n"
                   "0003,500100.5,4600200.0,33T,41.5,12.1\n0004,,,,41.9,12.5\n")
    regions = _side(tmp_path, "regions.csv", "building,region\n0003,uni-a\n0004,uni-b\n0001,uni-c\n")
    bare = load_dataset("university1652", university_root)
    assert all(it.utm_east is None and "region" not in it.meta for it in bare.items)
    ds = load_dataset("university1652", university_root, coordinates=coords, regions=regions)
    q3 = ds.select(role="query", view="drone")[0]
    assert (q3.label, q3.utm_east, q3.utm_zone, q3.meta["region"]) == (3, 500100.5, "33T", "uni-a")
    q4 = [it for it in ds.items if it.label == 4][0]
    from geolib.coords import utm_to_latlon
    assert q4.utm_zone == "33T" and 250_000 < q4.utm_east < 350_000  # from lat/lon (12.5 E: zone 33, west part)
    assert utm_to_latlon(q4.utm_east, q4.utm_north, 33) == pytest.approx((41.9, 12.5), abs=1e-7)
    assert q4.meta["region"] == "uni-b"
    t1 = ds.select(split="train", view="satellite")
    assert [it.meta.get("region") for it in t1] == ["uni-c", None] and t1[0].utm_east is None
    missing = [str(p) for p in ds.warnings if "coords.csv" in p.path]
    assert missing and "3 building(s) have no coordinates" in missing[0] and "0005" in missing[0]


def test_university_side_file_overrides_locations_csv(university_root, tmp_path):
    (university_root / "locations.csv").write_text(
        "label,utm_east,utm_north,utm_zone,lat,lon,region\n3,1.0,2.0,33T,41.5,12.1,r1\n")
    regions = _side(tmp_path, "regions.csv", "building,region\n0003,uni-a\n")
    it = load_dataset("university1652", university_root, regions=regions).select(role="query", view="drone")[0]
    assert (it.utm_east, it.meta["region"]) == (1.0, "uni-a")  # coordinates kept, region replaced


@pytest.mark.parametrize("text, where, words", [
    ("building,east,north\n0003,1,2\n", ":1", ["lacks column", "building,utm_east,utm_north"]),
    ("building,utm_east,utm_north,utm_zone,lat,lon\n0003,1,2,33T,,\n0004,abc,2,33T,,\n", ":3",
     ["utm_east 'abc' is not a number"]),
    ("building,utm_east,utm_north,utm_zone,lat,lon\n0003,1,2,33T,,\n9999,1,2,33T,,\n", ":3",
     ["building 9999 has no class folder", "remove the row"]),
    ("building,utm_east,utm_north,utm_zone,lat,lon\n0003,1,2,33T,,\n0003,1,2,33T,,\n", ":3", ["listed twice"]),
    ("building,utm_east,utm_north,utm_zone,lat,lon\nB3,1,2,33T,,\n", ":2", ["not a building id"]),
    ("building,utm_east,utm_north,utm_zone,lat,lon\n0003,1,2,,,\n", ":2", ["utm_zone is empty"]),
])
def test_university_bad_coordinates_file_names_file_row_and_fix(university_root, tmp_path, text, where, words):
    coords = _side(tmp_path, "coords.csv", text)
    with pytest.raises(DatasetError) as info:
        load_dataset("university1652", university_root, coordinates=coords)
    err = [p for p in info.value.dataset.errors if "coords.csv" in p.path]
    assert len(err) == 1 and err[0].path.endswith(where)
    assert all(w in err[0].message for w in words), err[0].message


def test_university_bad_regions_file_and_misplaced_side_files(university_root, tmp_path, vpr_root):
    regions = _side(tmp_path, "regions.csv", "building,university\n0003,a\n")
    with pytest.raises(DatasetError, match=r"regions.csv:1.*lacks column\(s\) region"):
        load_dataset("university1652", university_root, regions=regions)
    with pytest.raises(DatasetError, match="nope.csv: coordinates file not found"):
        load_dataset("university1652", university_root, coordinates=tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="university1652 only"):
        load_dataset("vpr", vpr_root, query_folder="queries_v1", coordinates=regions)


def test_vpr_train_split_as_a_plain_tree(vpr_root):
    make_image(vpr_root / "train" / "37.7" / vpr_name(500000, 4600000, 0.0), seed=1)
    make_image(vpr_root / "train" / vpr_name(500010, 4600000, 30.0), seed=2)
    ds = load_dataset("vpr", vpr_root, split="train")  # no database/ folder: the whole tree
    assert len(ds.items) == 2 and ds.options["layout"] == "plain"
    assert {it.meta["folder"] for it in ds.items} == {"37.7", "."}
    with pytest.raises(DatasetError, match="missing folder"):
        load_dataset("vpr", vpr_root, split="val")  # an evaluation split is never read whole
