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


def test_report_columns_and_offline_plotly_and_widgets():
    import json

    import nbformat
    import plotly.graph_objects as go

    from geolib.report import metrics_table_html

    rec = {"_source": "s", "task": "vpr", "protocol": "vpr-25m", "dataset": "d", "split": "test",
           "query_view": "query", "gallery_view": "database", "model": "m", "seed": 0,
           "metrics": {"R@1": 50.0, "ms_per_image": 3.5}}
    table = metrics_table_html([rec])
    for col in ("protocol", "dataset", "direction", "R@1", "R@5", "R@10", "AP", "ms_per_image"):
        assert f">{col}</th>" in table
    assert "<td>query→database</td>" in table and "<td>3.50</td>" in table

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    bundle = fig._repr_mimebundle_() if hasattr(fig, "_repr_mimebundle_") else {}
    plotly_json = json.loads(fig.to_json())
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                            "version_minor": 0}}
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.plotly.v1+json": plotly_json, "text/html": bundle.get("text/html", "<div></div>"),
        "text/plain": "Figure"}),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": "Explorer(...)"})]
    nb.cells = [cell]
    nb_dir = outputs_root() / "smoke" / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(nb_dir / "99_plotly.ipynb"))
    write_report("smoke")
    page = (outputs_root() / "smoke" / "report" / "notebooks" / "99_plotly.html").read_text()
    assert "cdn.plot.ly/plotly" not in page and 'src="../plotly.min.js"' in page
    assert "widget-state" not in page and "Explorer(...)" in page
    assert (outputs_root() / "smoke" / "report" / "plotly.min.js").stat().st_size > 1_000_000
