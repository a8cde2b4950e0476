import subprocess
import sys

import pytest

from conftest import make_image, png_header, vpr_name
from geolib.data.datasets import load_dataset
from geolib.data.validate import check_data, main


def test_check_data_broken_tree_names_both_files_and_exits_1(broken_university_root, capsys):
    code = main(["--format", "university1652", str(broken_university_root)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "cut.jpg" in err and "ERROR" in err and "cut.jpg" not in out  # errors go to stderr
    assert "street/0001" in out and "empty class folder" in out
    assert "FAILED: 1 error(s)" in err


def test_check_data_clean_tree_prints_summary_and_exits_0(university_root, capsys):
    code = main(["--format", "university1652", str(university_root)])
    out, err = capsys.readouterr()
    assert code == 0 and "ERROR" not in err and "FAILED" not in err  # stderr holds only the progress bar
    assert "test/gallery/satellite" in out and "classes without images: 0" in out
    assert "converted on load (mode/EXIF): 1" in out  # the grayscale street image
    assert "street/0002/gray.jpg: mode L converted to RGB" in out  # ... and which one it was
    assert out.strip().endswith("OK: 0 error(s), 0 warning(s)")


def test_converted_files_are_listed_up_to_ten(university_root, capsys):
    for i in range(12):
        make_image(university_root / "train" / "drone" / "0001" / f"rgba-{i:02d}.png", seed=i, mode="RGBA")
    assert main(["--format", "university1652", str(university_root)]) == 0
    out = capsys.readouterr().out
    assert "converted on load (mode/EXIF): 13" in out
    assert "rgba-00.png: mode RGBA converted to RGB" in out and "… and 3 more" in out
    assert sum("converted to RGB" in line for line in out.splitlines()) == 10


def test_decode_catches_corruption_the_quick_check_misses(university_root):
    bad = make_image(university_root / "train" / "drone" / "0001" / "bad.png", size=(64, 64))
    data = bytearray(bad.read_bytes())
    data[300:700] = b"\x00" * 400  # garbage inside the pixel stream; the IEND chunk is intact
    bad.write_bytes(bytes(data))
    assert load_dataset("university1652", university_root, strict=False).errors == []
    ds = check_data("university1652", university_root, progress=False)
    assert any("bad.png" in p.path and "broken data stream" in p.message for p in ds.errors)


def test_an_oversized_image_is_one_problem_and_the_check_goes_on(university_root, capsys):
    (university_root / "train" / "satellite" / "0001" / "huge.png").write_bytes(png_header(13500, 13500))
    cut = university_root / "train" / "drone" / "0002" / "z-cut.jpg"
    make_image(cut, size=(64, 64))
    cut.write_bytes(cut.read_bytes()[:300] + b"\xff\xd9")  # after the huge file, still checked
    assert main(["--format", "university1652", str(university_root)]) == 1
    err = capsys.readouterr().err
    assert "huge.png: 13500×13500 pixels is too large (limit 80,000,000 pixels); downscale the image" in err
    assert "z-cut.jpg" in err and "FAILED: 2 error(s)" in err


def test_cli_entry_point(university_root):
    res = subprocess.run([sys.executable, "-m", "geolib", "check-data", "--format", "university1652",
                          str(university_root), "--quick"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "OK:" in res.stdout
    res = subprocess.run([sys.executable, "-m", "geolib", "nope"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown command" in res.stderr


def test_vpr_query_folder_option(vpr_root, capsys):
    assert main(["--format", "vpr", str(vpr_root)]) == 1
    err = capsys.readouterr().err
    assert "queries_v1" in err and "--query-folder" in err and "set query_folder" not in err
    assert main(["--format", "vpr", str(vpr_root), "--query-folder", "queries_v1"]) == 0
    (vpr_root / "test" / "database").rename(vpr_root / "test" / "db")
    assert main(["--format", "vpr", str(vpr_root), "--query-folder", "queries_v1"]) == 1
    assert "--database-folder" in capsys.readouterr().err
    assert main(["--format", "vpr", str(vpr_root), "--query-folder", "queries_v1", "--database-folder", "db"]) == 0


def test_a_tree_with_no_images_for_the_format_fails(vpr_root, capsys):
    """A VPR tree checked as University-1652 used to pass: 0 images, exit 0."""
    assert main(["--format", "university1652", str(vpr_root)]) == 1
    out, err = capsys.readouterr()
    assert "no images found for format university1652" in err and "images: 0" in out
    assert "decoding images" not in err  # no empty progress bar
    assert any("no images found" in p.message for p in check_data("cvusa", vpr_root, progress=False).errors)


def test_vpr_queries_without_a_database_image_within_25m_are_named(vpr_root, capsys):
    q = vpr_root / "test" / "queries_v1"
    make_image(q / vpr_name(500055, 4600000), seed=20)  # exactly 25 m from the last database image: a positive
    for i in range(12):
        make_image(q / vpr_name(500056 + 100 * i, 4600000, note=f"far{i:02d}"), seed=30 + i)  # 26 m and more
    ds = check_data("vpr", vpr_root, decode=False, query_folder="queries_v1")
    assert ds.options["queries_without_positive"] == 12 and not ds.errors
    assert main(["--format", "vpr", str(vpr_root), "--query-folder", "queries_v1", "--quick"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if "within 25 m" in s)
    assert line.startswith("WARNING") and "12 of 15 queries" in line and "misses" in line
    assert "far00" in line and "far09" in line and "far10" not in line and "and 2 more" in line
    assert "500055.00" not in line


@pytest.mark.parametrize("args, words", [
    (["--format", "vigor", "--mode", "cross-area"], "choose one of: cross, same"),
    (["--format", "vigor", "--split", "val"], "choose one of: train, test"),
    (["--format", "cvusa", "--split", "test"], "choose one of: train, val"),
    (["--format", "cvact", "--split", "test"], "choose one of: train, val"),
    (["--format", "vpr", "--split", "val"], "choose one of: test"),
    (["--format", "university1652", "--mode", "same"], "--mode applies to --format vigor only"),
    (["--format", "folder", "--split", "test"], "--format folder has no splits"),
    (["--format", "cvusa", "--query-folder", "q"], "--query-folder applies to --format vpr only"),
])
def test_bad_split_or_mode_is_a_one_line_usage_error(vpr_root, capsys, args, words):
    assert main([*args, str(vpr_root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_missing_root_is_a_usage_error(tmp_path, capsys):
    assert main(["--format", "vpr", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err


def test_split_is_passed_to_the_loader(university_root, capsys):
    assert main(["--format", "university1652", "--split", "test", "--quick", str(university_root)]) == 0
    out = capsys.readouterr().out
    assert "test/gallery/satellite" in out and "train/train" not in out


def test_cli_checks_university1652_side_files(tmp_path, capsys):
    from release_trees import make_u1652

    root = make_u1652(tmp_path / "u")
    regions = tmp_path / "regions.csv"
    labels = sorted(p.name for p in (root / "train" / "satellite").iterdir())
    regions.write_text("building,region\n" + "".join(f"{b},{i % 2}\n" for i, b in enumerate(labels)))
    assert main([str(root), "--format", "university1652", "--quick", "--regions", str(regions)]) == 0
    regions.write_text("building,region\n" + f"{labels[0]},\n")
    assert main([str(root), "--format", "university1652", "--quick", "--regions", str(regions)]) == 1
    assert "regions.csv" in capsys.readouterr().err
    assert main([str(root), "--format", "cvusa", "--regions", str(regions)]) == 2
