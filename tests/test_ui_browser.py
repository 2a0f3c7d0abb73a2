"""The MLflow UI, checked as a person sees it: a real headless Chromium (Debian's `chromium`, which
`make test` installs through `make chromium`) driven by Playwright against `mlflow server` on
127.0.0.1, over the SQLite store of a finished tiny pipeline run (tests/conftest.py `finished_project`):
- the experiment's runs list shows the parent run, and opening it shows its five stage children;
- the rl run's charts show the reward and validation curves, with every logged point;
- the gate report artifact opens and renders;
- the registered model's page shows version 1 as `@champion`;
- the evaluate run's per-item table (eval/items.json, logged with MLflow's log_table) opens as a table with
  every column, and paging through it shows every item of both models in order;
- the evaluate run's report images (score histograms, flipped items, RL curves) open at their full size.

The UI is a React app: every step waits for what a person would wait for (a name, a chart, a
heading), never a fixed time. The browser may only talk to 127.0.0.1: any other request is
aborted and fails the test. Screenshots (1280x800) go to a temporary directory, or to
$REFTFLOW_UI_SCREENSHOTS (README: `REFTFLOW_UI_SCREENSHOTS=docs/ui` refreshes the ones in docs/).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from tests.helpers import free_port


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900),
              # decided before any fixture runs (the shared pipeline run is session-scoped, so it would come first)
              pytest.mark.skipif(_chromium() is None, reason="no chromium here: `make chromium` (run by `make test`) "
                                 "installs Debian's package where it can")]

STAGE_CHILDREN = ["prepare", "sft", "rl", "evaluate", "gate"]  # base logs no run (see test_pipeline_e2e.py)
MODEL = "reftflow-policy"
# nothing but the page: no first-run UI, updates, sync, field trials or metrics reporting
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
                 "--disable-breakpad", "--metrics-recording-only", "--disable-field-trial-config",
                 "--dns-prefetch-disable"]



@pytest.fixture(scope="module")
def mlflow_ui(finished_project):
    """`mlflow server` on the finished run's store, on a free port of 127.0.0.1; yields its base URL."""
    assert finished_project.returncode == 0, finished_project.tail
    port = free_port()
    store = f"sqlite:///{finished_project.project / 'mlflow.db'}"
    log = open(finished_project.project.parent / "mlflow-server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=finished_project.project, stdout=log, stderr=subprocess.STDOUT,
                            # MLflow 3's job runner (seven huey consumers, for GenAI jobs) is not what
                            # these pages need, and on 2 cores it slows everything else down
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                            start_new_session=True)  # its own group: uvicorn's worker goes with it
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a cold start on a busy 2-core box took ~17 s; leave room
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not come up: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser(mlflow_ui):
    """Headless Chromium. It depends on the server so that it closes first: the server then stops at
    once instead of waiting for the browser's open connections."""
    from playwright.sync_api import sync_playwright  # the test extra: make setup installs it

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("REFTFLOW_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def runs(finished_project):
    """The run ids the pages are opened at (read from the same store the UI serves)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finished_project.project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reftflow")
    all_runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in all_runs if r.data.tags.get("reftflow.kind") == "pipeline")
    children = {r.info.run_name: r.info.run_id for r in all_runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return {"experiment": exp.experiment_id, "parent": parent.info.run_name, **children}


@pytest.fixture()
def page(browser, mlflow_ui):
    """A page that may reach the MLflow server and nothing else (anything else is aborted and recorded)."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    outside: list[str] = []

    def only_loopback(route):
        if urlparse(route.request.url).hostname == "127.0.0.1" or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    # as someone who closed the MLflow Assistant side panel once (MLflow keeps that in localStorage): it
    # opens by itself on a first visit and covers a third of every page; it is not what is checked here
    context.add_init_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
    pg = context.new_page()
    # a slow, shared machine: the first page load parses megabytes of JS (Playwright's defaults: 30 s for
    # actions, 5 s for expect)
    pg.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    yield pg
    context.close()
    assert outside == [], f"the browser tried to leave the machine: {outside}"


# MLflow 3.17's sidebar switch between "GenAI" (its default, kept per browser) and "Model training"
# decides where an experiment opens: on a fresh browser it is the GenAI traces overview, whatever the
# experiment's `mlflow.experimentKind` tag says. Every page is opened as someone who picked "Model
# training" would see it, through the switch's own URL parameter.
ML = "?workflowType=machine_learning"


def test_the_experiment_shows_the_parent_run_with_its_five_stage_children(page, mlflow_ui, runs, shots):
    from playwright.sync_api import expect

    page.goto(f"{mlflow_ui}/#/experiments/{runs['experiment']}{ML}")
    page.wait_for_url("**/runs?*")  # the runs list, not the GenAI overview
    parent = page.get_by_role("link", name=runs["parent"], exact=True)
    expect(parent).to_be_visible()
    child = {s: page.get_by_role("link", name=s, exact=True) for s in STAGE_CHILDREN}
    expect(child["rl"]).to_be_hidden()  # the children sit under their parent, folded
    page.locator(".ag-cell", has=parent).get_by_role("button").click()  # the expander beside the parent's name
    for stage in STAGE_CHILDREN:
        expect(child[stage]).to_be_visible()
    page.screenshot(path=shots / "mlflow-runs.png")


def test_the_rl_run_shows_the_reward_and_validation_curves(page, mlflow_ui, runs, finished_project, shots):
    from playwright.sync_api import expect
    from mlflow.tracking import MlflowClient

    page.goto(f"{mlflow_ui}/#/experiments/{runs['experiment']}/runs/{runs['rl']}/model-metrics{ML}")
    page.get_by_placeholder("Search metric charts").fill("reward_mean")
    client = MlflowClient(tracking_uri=f"sqlite:///{finished_project.project / 'mlflow.db'}")
    for metric in ("train_reward_mean", "valid_reward_mean"):
        points = len(client.get_metric_history(runs["rl"], metric))
        assert points >= 3, f"{metric}: too few points for a curve ({points})"
        card = page.locator("[data-testid=experiment-view-compare-runs-card]",
                            has=page.get_by_text(metric, exact=True))
        expect(card).to_have_count(1)
        # plotly draws one marker per logged step: the whole curve is on screen, not an empty frame
        expect(card.locator("path.point")).to_have_count(points)
    page.screenshot(path=shots / "mlflow-rl-curves.png")


def test_the_gate_report_artifact_opens(page, mlflow_ui, runs, shots):
    from playwright.sync_api import expect

    page.goto(f"{mlflow_ui}/#/experiments/{runs['experiment']}/runs/{runs['gate']}/artifacts{ML}")
    page.locator('[data-testid=artifact-tree-node][artifact-name="gate"]').click()
    page.locator('[data-testid=artifact-tree-node][artifact-name="gate.md"]').click()
    # rendered as markdown: the report's heading and its rules table, as metrics/gate.md has them
    expect(page.get_by_role("heading", name="Gate: PASS")).to_be_visible()
    expect(page.get_by_role("cell", name="min_pass_rate", exact=True)).to_be_visible()
    page.screenshot(path=shots / "mlflow-gate-report.png")


def test_the_registered_model_page_shows_the_champion(page, mlflow_ui, shots):
    from playwright.sync_api import expect

    page.goto(f"{mlflow_ui}/#/models/{MODEL}{ML}")
    version = page.get_by_role("row").filter(has_text="Version 1")
    expect(version).to_contain_text("@ champion")
    expect(version).to_contain_text("validation")
    page.screenshot(path=shots / "mlflow-champion.png")


def _logged_table(finished_project, run_id: str, path: str) -> list[dict]:
    import json

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finished_project.project / 'mlflow.db'}")
    table = json.loads(Path(client.download_artifacts(run_id, path)).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def test_the_evaluate_run_shows_every_item_as_a_table(page, mlflow_ui, runs, finished_project, shots):
    from playwright.sync_api import expect

    logged = _logged_table(finished_project, runs["evaluate"], "eval/items.json")
    page.goto(f"{mlflow_ui}/#/experiments/{runs['experiment']}/runs/{runs['evaluate']}/artifacts{ML}")
    page.locator('[data-testid=artifact-tree-node][artifact-name="eval"]').click()
    page.locator('[data-testid=artifact-tree-node][artifact-name="items.json"]').click()
    # MLflow knows it logged a table, so it shows one (not JSON text): every column, in the order logged
    expect(page.get_by_role("checkbox", name="View as table")).to_be_checked()
    grid = page.get_by_role("table")
    expect(grid.get_by_role("columnheader")).to_have_text(list(logged[0]))
    page.screenshot(path=shots / "mlflow-eval-items.png")
    seen, rows, following = [], grid.get_by_role("row"), page.locator('li[title="Next Page"]')
    while True:  # a page holds what fits the window: page through all of them
        expect(rows.nth(1)).to_be_visible()
        for r in range(1, rows.count()):
            seen.append(tuple(rows.nth(r).get_by_role("cell").nth(c).inner_text() for c in range(3)))
        if following.get_attribute("aria-disabled") == "true":
            break
        first = rows.nth(1).inner_text()
        following.click()
        expect(rows.nth(1)).not_to_have_text(first)
    # a number as the UI's JavaScript writes it (1 for 1.0; the shortest digits that read back otherwise)
    shown = [(row["model"], row["id"], str(int(row["score"])) if row["score"] == int(row["score"]) else repr(row["score"]))
             for row in logged]
    assert seen == shown
    assert {row["model"] for row in logged} == {"sft", "rl"}


def _png_size(path: Path) -> tuple[int, int]:
    import struct

    return struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk: width, height


@pytest.mark.parametrize("name", ["scores.png", "flips.png", "rl_curves.png"])
def test_the_evaluate_run_shows_its_report_images(page, mlflow_ui, runs, finished_project, shots, name):
    from playwright.sync_api import expect
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{finished_project.project / 'mlflow.db'}")
    width, height = _png_size(Path(client.download_artifacts(runs["evaluate"], f"report/{name}")))
    page.goto(f"{mlflow_ui}/#/experiments/{runs['experiment']}/runs/{runs['evaluate']}/artifacts{ML}")
    page.locator('[data-testid=artifact-tree-node][artifact-name="report"]').click()
    page.locator(f'[data-testid=artifact-tree-node][artifact-name="{name}"]').click()
    image = page.get_by_role("img", name=f"report/{name}", exact=True)
    expect(image).to_be_visible()
    # decoded whole: the browser has the figure's own pixels, not a broken-image icon
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [width, height]
    page.screenshot(path=shots / f"mlflow-eval-{name.replace('_', '-')}")
