import subprocess
import sys

from conftest import make_image
from geolib.datasets import load_dataset
from geolib.validate import check_data, main


def test_check_data_broken_tree_names_both_files_and_exits_1(broken_university_root, capsys):
    code = main(["--format", "university1652", str(broken_university_root)])
    out = capsys.readouterr().out
    assert code == 1
    assert "cut.jpg" in out and "ERROR" in out
    assert "street/0001" in out and "empty class folder" in out
    assert "FAILED: 1 error(s)" in out


def test_check_data_clean_tree_prints_summary_and_exits_0(university_root, capsys):
    code = main(["--format", "university1652", str(university_root)])
    out = capsys.readouterr().out
    assert code == 0
    assert "test/gallery/satellite" in out and "classes without images: 0" in out
    assert "converted on load (mode/EXIF): 1" in out  # the grayscale street image
    assert out.strip().endswith("OK: 0 error(s), 0 warning(s)")


def test_decode_catches_corruption_the_quick_check_misses(university_root):
    bad = make_image(university_root / "train" / "drone" / "0001" / "bad.png", size=(64, 64))
    data = bytearray(bad.read_bytes())
    data[300:700] = b"\x00" * 400  # garbage inside the pixel stream; the IEND chunk is intact
    bad.write_bytes(bytes(data))
    assert load_dataset("university1652", university_root, strict=False).errors == []
    ds = check_data("university1652", university_root, progress=False)
    assert any("bad.png" in p.path and "broken data stream" in p.message for p in ds.errors)


def test_cli_entry_point(university_root):
    res = subprocess.run([sys.executable, "-m", "geolib", "check-data", "--format", "university1652",
                          str(university_root), "--quick"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "OK:" in res.stdout
    res = subprocess.run([sys.executable, "-m", "geolib", "nope"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown command" in res.stderr


def test_vpr_query_folder_option(vpr_root, capsys):
    assert main(["--format", "vpr", str(vpr_root)]) == 1
    assert "queries_v1" in capsys.readouterr().out
    assert main(["--format", "vpr", str(vpr_root), "--query-folder", "queries_v1"]) == 0
