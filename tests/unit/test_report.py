"""Reports from tiny-model run folders: figures, report.html, odd run folders, and a real headless browser."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from editscope.cli import main
from editscope.errors import EditscopeError
from editscope.report import FIGURES, REPORT_HTML, FigureStyle, ReportConfig, build_report, load_runs
from editscope.report.style import run_color, style_context
from editscope.runs import execute, load_run_config

FAST = ReportConfig(dpi=72)  # the tests check structure; the browser test renders at the default dpi
ONE = ReportConfig(dpi=72, figures=("balance",))  # for tests about the folder, not the figures
TINY_EDITORS = {
    "memit": {"layers": [1, 2], "mom2_update_weight": 10.0},
    "encore": {"layers": [1, 2], "mom2_update_weight": 10.0, "norm_weight": 1.0, "z": {"steps": 20, "mpes": True}},
}
INSTRUMENTS = {
    "activations": {"n_texts": 4, "seq_len": 32},
    "subspace": {"n_texts": 4, "seq_len": 32, "k": 4},
    "edit_quality": {"retention_sample": 10, "generation_prompts": 2, "generation_tokens": 8},
    "perplexity": {"n_windows": 2, "seq_len": 32},
}
ALL_FIGURES = {f.name for f in FIGURES}


def _run(model: Path, out: Path, editor: str, seed: int = 0) -> Path:
    hparams = {"context_lengths": [], "stats_samples": 200, "stats_seq_len": 32, "z": {"steps": 20}, **TINY_EDITORS[editor]}
    config = load_run_config(
        None,
        {
            "model": str(model), "editor": editor, "editor_config": hparams, "edits": 20, "batch_size": 5, "every": 10,
            "seed": seed, "instruments": ["weights", "activations", "subspace", "edit_quality", "perplexity"],
            "instrument_config": INSTRUMENTS, "out": str(out),
        },
    )  # fmt: skip
    execute(config)
    return out


@pytest.fixture(scope="module")
def runs(tiny_folder, tmp_path_factory) -> dict[str, Path]:
    """Three finished tiny runs; two share the folder name ``memit``."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "a/memit": _run(tiny_folder, root / "a" / "memit", "memit"),
        "b/memit": _run(tiny_folder, root / "b" / "memit", "memit", seed=1),
        "encore": _run(tiny_folder, root / "encore", "encore"),
    }


@pytest.fixture(scope="module")
def full_run(runs, tmp_path_factory) -> Path:
    """The first memit run with downstream keys added: every figure has data."""
    return _copy_run(runs["a/memit"], tmp_path_factory.mktemp("full") / "memit", _with_downstream(_records(runs["a/memit"])))


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _copy_run(source: Path, target: Path, records: list[dict], tail: str = "") -> Path:
    target.mkdir(parents=True)
    shutil.copy(source / "config.yaml", target / "config.yaml")
    (target / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return target


def _with_downstream(records: list[dict]) -> list[dict]:
    """The records with few-shot downstream keys added (their instrument needs task files)."""
    out = []
    for i, record in enumerate(records):
        metrics = dict(record["metrics"])
        for task in ("sst2", "mrpc", "cola", "rte", "nli", "mmlu"):
            metrics.update({f"downstream/{task}/acc": 0.7 - 0.05 * i, f"downstream/{task}/mcc": 0.3 - 0.1 * i,
                            f"downstream/{task}/f1": 0.6, f"downstream/{task}/agree": 1.0 - 0.1 * i})  # fmt: skip
        out.append({**record, "metrics": metrics})
    return out


def _check_files(html: Path, expected: set[str]) -> str:
    """Every expected figure as a non-empty PNG and a parseable SVG; return the page."""
    figures = html.parent / "figures"
    assert {p.stem for p in figures.iterdir()} == expected
    for name in expected:
        png, svg = figures / f"{name}.png", figures / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        ET.parse(svg)  # well-formed
        page = html.read_text()
        assert f'src="figures/{name}.png"' in page and f'href="figures/{name}.svg"' in page
    return html.read_text()


def test_report_from_one_run(full_run, tmp_path):
    html = build_report([full_run], tmp_path / "report", FAST)
    assert html == tmp_path / "report" / REPORT_HTML
    page = _check_files(html, ALL_FIGURES)
    assert "Not drawn" not in page
    assert "finished: 20 edits" in page and "<details><summary>memit: config.yaml</summary>" in page
    assert "<th>statistics corpus</th>" in page and "bundled:wiki (count " in page
    assert "edited ||W|| growth %" in page and "downstream acc change pts" in page  # the summary table of runs.summary
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained


def test_report_from_three_runs_overlays_them_in_fixed_colours(runs, tmp_path):
    names = list(runs)
    html = build_report(list(runs.values()), tmp_path / "report", FAST)
    _check_files(html, ALL_FIGURES - {"downstream"})
    assert [r.name for r in load_runs(list(runs.values()))] == names  # same folder names told apart by their parents
    for svg in (tmp_path / "report" / "figures").glob("*.svg"):
        text = svg.read_text()
        for i, name in enumerate(names):
            assert f">{name}<" in text, (svg.name, name)  # in the legend (SVG keeps text as text)
            assert run_color(i).lower() in text.lower(), (svg.name, name)  # the run's colour, in every figure


def test_run_with_one_checkpoint_renders(runs, tmp_path, caplog):
    step0 = _copy_run(runs["a/memit"], tmp_path / "started", _records(runs["a/memit"])[:1])
    with caplog.at_level(logging.INFO, logger="editscope.report"):
        html = build_report([step0], tmp_path / "report", FAST)
    page = _check_files(html, ALL_FIGURES - {"downstream", "edit_quality", "retention_by_age"})  # no edit scored at step 0
    assert "figure edit_quality skipped" in caplog.text
    assert "Not drawn, no run measured them: Edit quality, Downstream ability, Retention by edit age." in page
    assert "in progress: 0 of 20 edits" in page


def test_torn_last_line_is_skipped_with_a_warning(runs, tmp_path, caplog):
    records = _records(runs["encore"])
    torn = _copy_run(runs["encore"], tmp_path / "torn", records[:2], tail=json.dumps(records[2])[:150])
    with caplog.at_level(logging.WARNING):
        html = build_report([torn, runs["a/memit"]], tmp_path / "report", FAST)
    assert "skipped a torn or malformed line" in caplog.text
    page = _check_files(html, ALL_FIGURES - {"downstream"})
    assert "in progress: 10 of 20 edits" in page


def test_every_figure_has_labelled_axes_and_a_legend(full_run, runs):
    loaded = load_runs([full_run, runs["encore"]])
    style = FigureStyle()
    with style_context(style):
        for spec in FIGURES:
            figure = spec.draw(loaded, style)
            assert figure is not None, spec.name
            for ax in figure.axes:
                assert ax.get_xlabel() in ("edits", "edits (log scale)", "layer", "edits applied since the edit"), (spec.name, ax.get_title())
                assert ax.get_ylabel() and ax.get_title(), spec.name
                assert ax.has_data()
            legend = [t.get_text() for t in figure.legends[0].get_texts()]
            measured = ["memit"] if spec.name == "downstream" else ["memit", "encore"]  # only runs with the metrics
            assert legend[: len(measured)] == measured and "encore" not in legend[len(measured) :], spec.name


def test_log_spaced_checkpoints_get_a_log_edit_axis_and_even_ones_a_linear_axis(full_run, runs, tmp_path):
    """A scale study's checkpoints (0, 100, 200, 500, 1,000, ...) are drawn on a log axis ticked at the checkpoints,
    step 0 included; evenly spaced ones stay linear."""
    from editscope.report.style import log_spaced

    assert log_spaced([0, 100, 200, 500, 1000, 2000]) and not log_spaced([0, 100, 200, 300, 400])
    assert not log_spaced([0, 10, 20]) and not log_spaced([100, 200, 500])  # too few / under a decade
    records = _records(full_run)
    counts = [0, 100, 200, 500, 1000, 2000]
    relabelled = [{**records[min(i, len(records) - 1)], "edits": n} for i, n in enumerate(counts)]
    scaled = _copy_run(full_run, tmp_path / "scale" / "memit", relabelled)
    style = FigureStyle()
    with style_context(style):
        for name, folder, scale in (("log", scaled, "symlog"), ("linear", runs["a/memit"], "linear")):
            figure = next(spec for spec in FIGURES if spec.name == "weight_norms").draw(load_runs([folder]), style)
            over_edits = [ax for ax in figure.axes if ax.get_xlabel().startswith("edits")]
            assert over_edits, name
            for ax in over_edits:
                assert ax.get_xscale() == scale, name
                if scale == "symlog":
                    assert ax.get_xlabel() == "edits (log scale)"
                    assert list(ax.get_xticks()) == [float(n) for n in counts]


def test_units_in_axis_labels(runs):
    loaded = load_runs([runs["a/memit"]])
    style = FigureStyle()
    with style_context(style):
        labels = {
            spec.name: [ax.get_ylabel() for ax in spec.draw(loaded, style).axes] for spec in FIGURES if spec.name != "downstream"
        }
    assert labels["weight_norms"] == [r"$\Vert W\Vert_F$", r"$\Vert W\Vert_F$ change (%)", r"$\Vert W\Vert_F$"]
    assert labels["subspace_shift"][0] == "principal angle (degrees)"
    assert all(label.endswith("(%)") for label in labels["edit_quality"])
    assert labels["spectrum"][0] == r"$\sigma_{max}/\sigma_{min}$"
    assert labels["retention_by_age"] == ["efficacy (%)", "paraphrase (%)"]


def test_stability_figures_and_the_collapse_point(full_run, runs, tmp_path):
    """Spectrum from the exact SVD keys, retention buckets on the x axis, and a collapse point where the
    rule says: an X at the first checkpoint whose agreement is under the threshold, named in the page."""
    from editscope.runs.collapse import CollapseRule

    style = FigureStyle()
    rule = CollapseRule(efficacy_below=None, ppl_rise_pct=None, agreement_below=0.85)  # agreement 1.0, 0.9, 0.8
    loaded = load_runs([full_run, runs["encore"]], rule)
    assert loaded[0].collapse.edits == 20 and "downstream agreement 0.800 < 0.85" in loaded[0].collapse.reason
    assert loaded[1].collapse is None  # no downstream keys: nothing crossed
    figures = {spec.name: spec for spec in FIGURES}
    with style_context(style):
        spectrum = figures["spectrum"].draw(loaded, style)
        ages = figures["retention_by_age"].draw(loaded, style)
        collapse = figures["collapse"].draw(loaded, style)
    assert [ax.get_title() for ax in spectrum.axes][0] == "(a) condition number of W"
    ticks = [t.get_text() for t in ages.axes[0].get_xticklabels()]
    assert ticks and ticks[0] == "0-10"
    (panel,) = collapse.axes  # only the agreement criterion is on
    crosses = [line for line in panel.lines if line.get_marker() == "X"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [20]
    html = build_report([full_run, runs["encore"]], tmp_path / "report", ReportConfig(dpi=72, collapse=rule))
    page = html.read_text()
    assert "Collapse point: the first checkpoint where downstream agreement &lt; 0.85." in page
    assert "memit at 20 edits (downstream agreement 0.800 &lt; 0.85)" in page
    assert "<th>collapse at (edits)</th>" in page and "<th>edited cond (0 -&gt; end)</th>" in page


def test_out_folder_is_replaced_only_when_it_is_a_report(runs, tmp_path):
    out = tmp_path / "report"
    build_report([runs["a/memit"]], out, ONE)
    (out / "figures" / "stale.png").write_bytes(b"x")
    build_report([runs["encore"]], out, ONE)  # an earlier report is replaced as a whole
    assert not (out / "figures" / "stale.png").exists() and "encore" in (out / REPORT_HTML).read_text()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(EditscopeError, match="not an earlier report"):
        build_report([runs["a/memit"]], foreign, ONE)
    with pytest.raises(EditscopeError, match="would replace run folder"):
        build_report([runs["a/memit"]], runs["a/memit"].parent, ONE)
    with pytest.raises(EditscopeError, match="no metrics.jsonl"):
        build_report([tmp_path / "nothing"], tmp_path / "r2", ONE)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_cli_report(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs["a/memit"]), str(runs["encore"]), "--out", str(out), "--dpi", "72"]) == 0
    assert capsys.readouterr().out.strip() == str(out / REPORT_HTML)
    assert (
        main(["report", str(runs["encore"]), "--out", str(out), "--formats", "png,pdf", "--dpi", "72", "--figures", "balance"])
        == 0
    )
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["balance.pdf", "balance.png"]
    assert (out / "figures" / "balance.pdf").read_bytes()[:5] == b"%PDF-"
    assert main(["report", str(runs["encore"]), "--out", str(out), "--formats", "svg"]) == 2  # png comes first
    capsys.readouterr()
    (out / REPORT_HTML).unlink()
    assert main(["report", str(runs["a/memit"]), "--out", str(out)]) == 2  # no longer a report: refused
    assert "not an earlier report" in capsys.readouterr().err


# -- in a real browser ---------------------------------------------------------------------------
def _chrome():
    """A headless Chromium driven by the system chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    driver_path = shutil.which("chromedriver")
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if driver_path is None or browser is None:
        pytest.skip("chromium/chromedriver not installed (make test installs the Debian packages chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,4000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over ``tmp_path / 'site'`` on a free port; yields its base URL."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def test_report_in_headless_chromium(runs, served):
    from io import BytesIO

    import numpy as np
    from PIL import Image

    root, url = served
    driver = _chrome()
    try:
        build_report(list(runs.values()), root / "report")  # at the default dpi, as users get it
        driver.get(f"{url}/report/{REPORT_HTML}")
        driver.execute_script("return Promise.allSettled([...document.images].map(i => i.decode()))")
        images = driver.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        )
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        screenshot = Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        title = driver.title
    finally:
        driver.quit()
    assert title == "editscope report"
    assert severe == []
    assert len(images) == len(ALL_FIGURES) - 1  # no downstream figure for these runs
    drawn = {src.split("/")[-1].removesuffix(".png") for src, _, _ in images}
    assert {"spectrum", "retention_by_age", "collapse"} <= drawn
    assert all(complete and width > 0 for _, complete, width in images), images
    pixels = np.asarray(screenshot.resize((320, 1000))).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    non_white = float((pixels.min(axis=1) < 235).mean())
    assert colours > 200 and non_white > 0.05, (colours, non_white)


def test_demo_ends_by_writing_the_report(runs, tmp_path, capsys, monkeypatch):
    """``editscope demo`` (its runs replaced by copies of the tiny runs) writes ``<out>/report`` and prints the path."""
    import editscope.runs

    def fake_execute(config, **_):
        source = runs["a/memit" if config.editor == "memit" else "encore"]
        _copy_run(source, Path(config.out), _records(source))

    monkeypatch.setattr(editscope.runs, "execute", fake_execute)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--edits", "20", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"Report: {out / 'report' / REPORT_HTML}" in printed
    page = (out / "report" / REPORT_HTML).read_text()
    assert "memit: config.yaml" in page and "encore: config.yaml" in page
