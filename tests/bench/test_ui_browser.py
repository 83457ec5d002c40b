"""The MLflow UI as a user sees it, in a real browser: the smoke study's store served by `mlflow server`
and driven with Playwright in Debian's Chromium (`.ci/run` installs both).

Checks the runs table (the parent with its nested runs), the chart view of the trials (a parallel-
coordinates plot over the searched parameters and val/elbo), the image grid (samples of VAE, AE and
PCA at one step) and a run page's metric against the store. Screenshots are kept under the test's
temporary folder; each test prints where. The UI polls the server forever: the tests wait on
selectors, never on network idle.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from bench import tags as T
from tests.bench.helpers import cli_env

pytestmark = pytest.mark.slow  # a smoke study with baselines, a server start and a browser: minutes on 2 cores

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 180_000  # one wait for the UI on a loaded 2-core machine (the first page load takes tens of seconds)
SERVER_START_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class UI:
    base: str  # http://127.0.0.1:PORT
    experiment_id: str
    parent: object  # the parent run (mlflow Run)
    runs: list  # every run of the experiment
    link: str  # the "trials, best first" link bench.run printed, pointed at this server

    def run(self, name: str):
        (r,) = [r for r in self.runs if r.info.run_name == name]
        return r

    def runs_view(self, search_filter: str, chart: bool = False) -> str:
        mode = "&compareRunsMode=CHART" if chart else ""
        return (
            f"{self.base}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
            f"&searchFilter={quote(search_filter, safe='')}{mode}"
        )


@pytest.fixture(scope="module")
def ui(smoke_compared, tmp_path_factory):
    """`mlflow server` on a free loopback port over the smoke study's store, for this module."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", smoke_compared.tracking_uri,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=smoke_compared.cwd, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"mlflow server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"mlflow server not up after {SERVER_START_S} s:\n{log.read_text()[-3000:]}"
            )
            time.sleep(1)
        client = smoke_compared.client()
        exp = client.get_experiment_by_name("smoke")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        (parent,) = [r for r in runs if r.data.tags.get(T.ROLE) == "study"]
        (link,) = re.findall(r"trials, best first: (\S+)", smoke_compared.proc.stdout)
        yield UI(base, exp.experiment_id, parent, runs, link.replace("http://127.0.0.1:5000", base))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium (as .ci/run does)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, request, tmp_path):
    """A fresh page (fresh local storage: the UI's first-visit dialogs each time); screenshots go to tmp_path."""
    context = browser.new_context(viewport={"width": 1600, "height": 1200})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.shots = tmp_path  # type: ignore[attr-defined]
    yield pg
    context.close()


def shot(page, name: str) -> Path:
    path = page.shots / f"{name}.png"
    page.screenshot(path=path, timeout=WAIT_MS)
    print(f"screenshot: {path}")
    return path


def open_view(page, url: str, ready) -> None:
    """Go to `url`, wait for `ready` (a locator), and dismiss the first-visit dialogs if they show."""
    page.goto(url)
    ready.first.wait_for()
    for name in ("Got it", "Close"):
        buttons = page.get_by_role("button", name=name, exact=True)
        for i in range(buttons.count()):
            with contextlib.suppress(Exception):  # gone already, or not clickable: nothing to dismiss
                buttons.nth(i).click(timeout=3000)


def run_link(page, run) -> object:
    return page.locator(f'a[href$="/runs/{run.info.run_id}"]:visible')


def expand(page, parent) -> None:
    """Open a parent row's nested runs (the +/- button in its name cell)."""
    row = page.get_by_role("row").filter(has=run_link(page, parent))
    row.first.locator('button[data-component-id*="runnamecellrenderer"]').click()


def add_chart(page, kind: str):
    """Open the chart view's 'Add chart' dialog for `kind`; returns the dialog."""
    page.get_by_role("button", name="Add chart").first.click()
    page.get_by_role("menuitem", name=kind).click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    return dialog


def pick(page, dialog, field: str, values: list[str]) -> None:
    """Select `values` in the dialog's multi-select labelled `field` (typing filters the options)."""
    box = dialog.locator('[data-testid="experiment-view-compare-runs-config-field"]').filter(
        has=page.get_by_role("heading", name=field, exact=True)
    )
    for v in values:
        box.locator(".du-bois-light-select-selector").click()
        page.keyboard.type(v)
        page.locator(".du-bois-light-select-item-option", has_text=re.compile(f"^{re.escape(v)}$")).first.wait_for()
        page.keyboard.press("Enter")  # the one option the typed text leaves
    page.keyboard.press("Escape")


# ------------------------------------------------------------------ the tests


def test_runs_table_shows_the_parent_with_its_nested_runs(ui, page):
    children = [r for r in ui.runs if r.info.run_id != ui.parent.info.run_id]
    roles = [r.data.tags.get(T.ROLE) for r in children]
    # 3 trials, AE and PCA at 2 latent sizes, and 3 models x 2 sizes per replicate seed (smoke ships 2 seeds;
    # test_report's slow test, which shares this store, may have added a third)
    assert roles.count("trial") == 3 and roles.count("baseline") == 4
    assert roles.count("replicate") in (12, 18) and len(children) == 7 + roles.count("replicate")
    open_view(
        page,
        f"{ui.base}/#/experiments/{ui.experiment_id}/runs?workflowType=machine_learning",
        run_link(page, ui.parent),
    )
    assert page.get_by_text(f"{len(children) + 1} matching runs").is_visible()
    expand(page, ui.parent)
    for r in children:  # each nested run's row, under its name (a pruned trial says so)
        link = run_link(page, r)
        link.wait_for()
        assert link.inner_text().strip() == r.info.run_name
    assert page.get_by_text("trial-002 (pruned)", exact=True).is_visible()
    # the experiment's description is on the page
    assert page.get_by_text("an Optuna tpe search over latent_dim, hidden_width, beta", exact=False).first.is_visible()
    shot(page, "runs-table")


def test_printed_link_opens_the_trials_and_their_parallel_coordinates(ui, page):
    trials = [r for r in ui.runs if r.data.tags.get(T.ROLE) == "trial"]
    open_view(page, ui.link + "&compareRunsMode=CHART", run_link(page, trials[0]))
    assert page.get_by_text(f"{len(trials)} matching runs").is_visible()
    for r in trials:  # the filter keeps the trials and only them; sorting lists them flat
        run_link(page, r).first.wait_for()
    dialog = add_chart(page, "Parallel coordinates")
    pick(page, dialog, "Params", ["latent_dim", "hidden_width", "beta"])
    pick(page, dialog, "Metrics", ["val/elbo"])
    plot = dialog.locator(".parcoords")
    plot.first.wait_for()
    texts = lambda sel: dialog.locator(sel).evaluate_all("els => els.map(e => e.textContent.trim())")  # noqa: E731 - SVG text
    titles = texts(".parcoords .dimension text.label")
    assert titles == ["latent_dim", "hidden_width", "beta", "val/elbo"], titles
    # the axes span the trials' values: latent_dim from 2 to 4, val/elbo around the trials' values
    latent_ticks = [
        float(t)
        for t in dialog.locator(".parcoords .axis")
        .first.locator(".tick text")
        .evaluate_all("els => els.map(e => e.textContent.replace('\u2212', '-'))")
    ]
    assert min(latent_ticks) == 2 and max(latent_ticks) == 4, latent_ticks
    shot(page, "parallel-coordinates")


def test_image_grid_shows_samples_of_vae_ae_and_pca_at_one_step(ui, page):
    page.set_viewport_size({"width": 1600, "height": 2200})  # the dialog's preview then holds the three runs
    runs = [
        ui.run("trial-001" if ui.run("trial-001").data.tags[T.LATENT_DIM] == "4" else "trial-000"),
        ui.run("ae-latent4"),
        ui.run("pca-latent4"),
    ]
    assert [r.data.tags[T.MODEL] for r in runs] == ["vae", "ae", "pca"]
    url = ui.runs_view(f"tags.{T.COMPARED} = 'true' and tags.{T.LATENT_DIM} = '4'", chart=True)
    open_view(page, url, run_link(page, ui.parent))
    if not run_link(page, runs[1]).count():
        expand(page, ui.parent)  # sorted by time, matching children show under their parent
    for r in runs:
        run_link(page, r).first.wait_for()
    dialog = add_chart(page, "Image grid")
    dialog.get_by_text("Images", exact=True).last.click()
    page.get_by_role("option", name=T.SAMPLES, exact=True).click()
    page.keyboard.press("Escape")
    slider, step = dialog.get_by_role("slider"), dialog.get_by_role("spinbutton")
    slider.focus()
    for _ in range(5):  # the slider moves from logged step to logged step; go to the last epoch
        if step.input_value() == "2":
            break
        slider.press("ArrowRight")
    assert step.input_value() == "2", step.input_value()
    images = dialog.locator("img")
    page.wait_for_function(
        "n => [...document.querySelectorAll('[role=dialog] img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= n",
        arg=3,
    )
    assert images.count() == 3, images.count()
    assert all("samples%2Bstep%2B2%2B" in (images.nth(i).get_attribute("src") or "") for i in range(3))
    text = dialog.inner_text()
    for r in runs:
        assert r.info.run_name in text
    assert "No image logged at this step" not in text
    shot(page, "image-grid")


def test_run_page_shows_the_store_s_metric_value(ui, page):
    best = next(r for r in ui.runs if r.info.run_id == ui.parent.data.tags[T.BEST_RUN_ID])
    open_view(
        page,
        f"{ui.base}/#/experiments/{ui.experiment_id}/runs/{best.info.run_id}",
        page.get_by_placeholder("Search metrics"),
    )
    page.get_by_placeholder("Search metrics").fill("test/elbo")
    cell = page.get_by_role("cell", name="test/elbo", exact=True)
    row = page.get_by_role("row").filter(has=cell)
    row.first.wait_for()
    shown = row.first.inner_text().split("\n")
    assert shown[0] == "test/elbo"
    assert float(shown[1]) == pytest.approx(best.data.metrics["test/elbo"], rel=1e-12), shown
    # its description (the note renders as Markdown: compare a plain stretch of it)
    assert page.get_by_text(f"VAE trial {best.data.tags[T.TRIAL_NUMBER]} of study", exact=False).first.is_visible()
    row.first.scroll_into_view_if_needed()
    shot(page, "run-page")
