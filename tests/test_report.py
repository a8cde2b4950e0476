import shutil
from pathlib import Path

from geolib import records
from geolib.paths import outputs_root
from geolib.apps.report import write_report

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

    from geolib.apps.report import metrics_table_html

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


def external_resources(page: str) -> list[str]:
    """URLs a browser would fetch from the network to show `page`: script/link/img/iframe sources,
    CSS `url(...)`/`@import`, and dynamic `import(...)` in scripts (plain `<a href>` links are not fetched)."""
    import re
    from html.parser import HTMLParser

    remote = re.compile(r"^\s*(https?:)?//", re.I)
    found: list[str] = []

    class Collect(HTMLParser):
        in_code = None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            for attr in {"script": ("src",), "link": ("href",), "img": ("src", "srcset"), "iframe": ("src",),
                         "source": ("src", "srcset"), "embed": ("src",), "object": ("data",),
                         "video": ("src", "poster"), "audio": ("src",)}.get(tag, ()):
                if a.get(attr) and remote.match(a[attr]):
                    found.append(a[attr])
            self.in_code = tag if tag in ("script", "style") else None

        def handle_endtag(self, tag):
            self.in_code = None

        def handle_data(self, data):
            if self.in_code == "style":
                data = re.sub(r"/\*.*?\*/", "", data, flags=re.S)  # licence comments name URLs
                found.extend(re.findall(r"""(?:url\(\s*['"]?|@import\s+['"])((?:https?:)?//[^'")\s]+)""", data))
            elif self.in_code == "script":
                found.extend(re.findall(r"""\bimport\s*\(?\s*['"]((?:https?:)?//[^'"]+)""", data))
                found.extend(re.findall(r"""\.src\s*=\s*['"]((?:https?:)?//[^'"]+)""", data))

    Collect().feed(page)
    return found


def test_report_pages_load_nothing_from_the_network():
    import base64
    import io
    import json

    import matplotlib
    import nbformat
    import plotly.graph_objects as go
    from nbconvert import HTMLExporter

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                            "version_minor": 0}}
    code = nbformat.v4.new_code_cell("x")
    code.outputs = [
        nbformat.v4.new_output("display_data", data={"application/vnd.plotly.v1+json": json.loads(
            go.Figure(go.Scatter(x=[1, 2], y=[3, 4])).to_json()), "text/plain": "Figure"}),
        nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(png.getvalue()).decode(),
                                                     "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {
            "model_id": "abc", "version_major": 2, "version_minor": 0}, "text/plain": "Explorer(...)"}),
        nbformat.v4.new_output("execute_result", data={"text/html": "<table><tr><td>1</td></tr></table>"},
                               execution_count=1)]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\nSee [the paper](https://arxiv.org/abs/2204.07309)."), code]
    # the checker itself finds nbconvert's CDN scripts in a default page
    stock, _ = HTMLExporter().from_notebook_node(nbformat.from_dict(json.loads(json.dumps(nb))))
    assert any("cdnjs" in url for url in external_resources(stock))

    nb_dir = outputs_root() / "smoke" / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(nb_dir / "98_offline.ipynb"))
    shutil.copy(ROOT / "notebooks" / "05_retrieval_explorer.ipynb", nb_dir / "05_retrieval_explorer.ipynb")
    write_report("smoke")
    report = outputs_root() / "smoke" / "report"
    pages = sorted(report.rglob("*.html"))
    assert {"index.html", "98_offline.html", "05_retrieval_explorer.html"} <= {p.name for p in pages}
    for page in pages:
        assert external_resources(page.read_text(encoding="utf-8")) == [], page.name
    offline = (report / "notebooks" / "98_offline.html").read_text(encoding="utf-8")
    assert 'src="../plotly.min.js"' in offline and "data:image/png;base64," in offline
    assert 'href="https://arxiv.org/abs/2204.07309"' in offline  # links stay links
    assert "jp-Notebook" in offline and "Explorer(...)" in offline  # still the lab page, widget as text
