import shutil
from pathlib import Path

from geolib import records
from geolib.paths import outputs_root
from geolib.report import write_report

ROOT = Path(__file__).resolve().parent.parent


def test_report_links_notebooks_and_lists_every_record():
    nb_dir = outputs_root() / "smoke" / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "notebooks" / "02_phase1_crossview.ipynb", nb_dir / "02_phase1_crossview.ipynb")
    for model, r1 in (("m-one", 11.25), ("m-two", 22.5)):
        records.write_record("report-test", task="crossview", protocol="university1652-official",
                             dataset="synthetic-smoke", split="test", query_view="street",
                             gallery_view="drone", model=model, metrics={"R@1": r1}, profile="smoke", seed=0)
    page = write_report("smoke").read_text()
    assert 'href="notebooks/02_phase1_crossview.html"' in page
    assert (outputs_root() / "smoke" / "report" / "notebooks" / "02_phase1_crossview.html").exists()
    assert "m-one" in page and "11.25" in page and "m-two" in page and "22.50" in page
    n = len(records.read_records("smoke"))
    assert f"Metrics records ({n})" in page and page.count("<tr>") == n + 1
