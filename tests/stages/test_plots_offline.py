"""`dvc plots show` writes a page that renders without internet: Vega inlined, no remote URL."""

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from dvc_project import ROOT, clean_env, copy_project, git_repo, run
from dvc_render.vega import VegaRenderer
from PIL import Image

TEMPLATE = ROOT / "plots" / "offline.html"
CLASSES = ("covid", "normal")


class Page(HTMLParser):
    """The src / href values of every tag, the inline scripts and the plot divs of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.inline_scripts: list[str] = []
        self.images: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "script":
            self._in_script = True
            self.inline_scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.inline_scripts[-1] += data


def write_plot_data(repo: Path) -> None:
    """The files the plots of dvc.yaml read, as the stages would write them (tiny)."""
    metrics = repo / "metrics"
    (metrics / "evaluate_plots" / "roc").mkdir(parents=True)
    (metrics / "evaluate_plots" / "pr").mkdir()
    (metrics / "train_history.csv").write_text(
        "epoch,loss,val_loss,accuracy,val_accuracy\n1,1.0,1.1,0.5,0.4\n2,0.7,0.9,0.7,0.6\n"
    )
    (metrics / "test_predictions.csv").write_text(
        "path,actual,predicted\na.png,covid,covid\nb.png,normal,covid\nc.png,normal,normal\n"
    )
    for name in CLASSES:
        (metrics / "evaluate_plots" / "roc" / f"{name}.csv").write_text(
            "fpr,tpr,threshold\n0,0,1\n0.5,0.8,0.5\n1,1,0\n"
        )
        (metrics / "evaluate_plots" / "pr" / f"{name}.csv").write_text(
            "recall,precision,threshold\n0,1,1\n0.8,0.7,0.5\n1,0.5,0\n"
        )
    (metrics / "evaluate_plots" / "calibration.csv").write_text(
        "confidence,accuracy,count\n0.55,0.5,4\n0.85,0.9,8\n"
    )
    # one figure in each report folder the stages declare as plots
    for name in (
        "build/class_counts.png",
        "evaluate/confusion_matrix.png",
        "compare/leaderboard.png",
    ):
        figure = repo / "reports" / name
        figure.parent.mkdir(parents=True)
        Image.fromarray(np.full((20, 30), 128, np.uint8)).save(figure)


@pytest.fixture(scope="module")
def shown(tmp_path_factory) -> tuple[Path, Page]:
    """A copy of the project with plot data, after `dvc plots show` with the repo's config."""
    repo = tmp_path_factory.mktemp("plots") / "project"
    copy_project(repo, yaml.safe_load((ROOT / "params.yaml").read_text()))
    env = clean_env()
    git_repo(repo, env)
    write_plot_data(repo)
    # the page goes outside the repository, as in the pipeline test: nothing may point back
    out = repo.parent / "page"
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)], repo, env)
    return out, Page((out / "index.html").read_text(encoding="utf-8"))


def test_the_page_refers_to_no_remote_url(shown):
    out, page = shown
    # then no script, image or link reaches for the network: every src / href is local
    remote = [link for link in page.links if re.match(r"(https?:)?//", link)]
    assert not remote, f"remote references in {out / 'index.html'}: {remote}"
    assert "cdn.jsdelivr.net" not in (out / "index.html").read_text(encoding="utf-8")
    # and the report figures are copies beside the page, referred to relatively
    assert len(page.images) == 3 and all(not Path(src).is_absolute() for src in page.images)
    assert all((out / src).is_file() for src in page.images)


def test_the_page_carries_vega_and_draws_every_plot_with_it(shown):
    _, page = shown
    code = "\n".join(page.inline_scripts)
    # then the three libraries are in the page itself, each with its licence banner
    for package in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"/*! {package} | BSD-3-Clause" in code, package
    # and every plot of dvc.yaml is drawn by vegaEmbed from data inside the page
    definitions = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    embeds = len(re.findall(r"vegaEmbed\('#", code))
    assert embeds >= len(definitions) + len(CLASSES)  # roc and pr: one plot per class file
    for drawn in ('"val_loss"', '"val_accuracy"', '"actual"', '"fpr"', '"precision"', '"count"'):
        assert drawn in code, drawn


def test_the_template_inlines_the_versions_dvc_would_load_from_the_cdn():
    # given the CDN scripts of DVC's own page (dvc_render) and the repository's template
    cdn = dict(re.findall(r"npm/([a-z-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    template = TEMPLATE.read_text(encoding="utf-8")
    # then the template holds the same versions, licences beside it, and no {scripts} slot
    # (that is where dvc_render would put its CDN <script> tags)
    assert set(cdn) == {"vega", "vega-lite", "vega-embed"}
    for package, version in cdn.items():
        assert f"/*! {package}@{version} | BSD-3-Clause" in template, (package, version)
        assert "Redistribution and use" in (TEMPLATE.parent / f"LICENSE.{package}").read_text()
    assert "{plot_divs}" in template and "{scripts}" not in template
    assert "sourceMappingURL" not in template
    # and .dvc/config names it, relative to .dvc/ as DVC resolves it
    config = (ROOT / ".dvc" / "config").read_text()
    assert (ROOT / ".dvc" / "../plots/offline.html").resolve() == TEMPLATE
    assert "html_template = ../plots/offline.html" in config


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless chromium")
def test_the_page_renders_in_a_browser_without_network(shown, tmp_path):
    out, page = shown
    # when headless Chromium opens the page from disk with every connection refused
    dom = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--proxy-server=127.0.0.1:9",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (out / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # then vega-embed drew a non-empty canvas for every plot
    drawn = re.findall(r'<canvas width="(\d+)" height="(\d+)" class="marks"', dom)
    embeds = len(re.findall(r"vegaEmbed\('#", "\n".join(page.inline_scripts)))
    assert len(drawn) == embeds and all(int(w) > 0 and int(h) > 0 for w, h in drawn), drawn
