"""`make ui-check`: the MLflow comparison opened in a real browser (headless Chromium through Selenium).

A smoke benchmark is written to its own store under ``runs/ui-check/`` (reused when it is there), the MLflow
UI is started with the command ``make mlflow-ui`` runs, on a free loopback port, and Chromium:

1. opens the link ``make mlflow-ui`` prints for the experiment and checks that it lands on the training
   runs (MLflow 3 keys its landing view on the browser's *workflow type*, ``GenAI`` by default, which the
   link's ``workflowType=machine_learning`` sets; the experiment tag ``mlflow.experimentKind`` does not);
2. unfolds the parent run and checks that every child run is listed under it;
3. opens the compare view of the child runs and checks their ``cl/forgetting`` and ``cl/backward_gain``
   are there (a metric no child logged, e.g. a backward gain left undefined, is named and skipped);
4. opens the parent's artifacts ``comparison.md`` and ``tradeoff.png``;

saving a screenshot of each step under ``runs/ui-check/``. Exit code 0 when every check passed, 1 when
one failed (each failure printed with what was on the page), 2 when Chromium or Selenium is missing.

    .venv/bin/python -m lightning_asr.study.ui_check [--out runs/ui-check] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "forgetting-smoke"
METRICS = ("cl/forgetting", "cl/backward_gain")
MODEL_TRAINING = "workflowType=machine_learning"  # the UI's "Model training" view, not its GenAI one


class Missing(RuntimeError):
    """Chromium, its driver or Selenium is not installed."""


def find_browser(chromium: str | None) -> tuple[str, str]:
    """Paths of Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``)."""
    browser = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if not browser or not driver:
        raise Missing(
            "Chromium and chromedriver are needed — fix: apt-get install chromium chromium-driver "
            "(no browser is downloaded: Selenium is pointed at these binaries)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError as err:
        raise Missing("Selenium is needed — fix: .venv/bin/pip install -e '.[dev]'") from err
    return browser, driver


def smoke_store(out: Path) -> str:
    """A store holding one smoke benchmark (parent run, one child per strategy); written once, then reused."""
    from lightning_asr.study.cli import forgetting_main
    from lightning_asr.study.tracking import client_for

    uri = f"sqlite:///{out / 'mlflow.db'}"
    if (out / "mlflow.db").exists() and client_for(uri).get_experiment_by_name(EXPERIMENT):
        return uri
    args = ["--profile", "smoke", f"tracking_uri={uri}", f"artifact_root={out / 'artifacts'}"]
    args += [f"output_dir={out / 'bench'}", f"corpus.root={out / 'corpus'}", f"base.cache_dir={out / 'bases'}"]
    if forgetting_main(args) != 0:
        raise RuntimeError("the smoke benchmark failed; see its output above")
    return uri


def start_ui(uri: str, out: Path, port: int) -> subprocess.Popen:
    """``make mlflow-ui`` against this store and port; returns once the UI answers."""
    command = ["make", "--no-print-directory", "mlflow-ui", f"MLFLOW_PORT={port}", f"MLFLOW_STORE={uri}"]
    command.append(f"MLFLOW_ARTIFACTS={out / 'mlartifacts'}")
    log = open(out / "mlflow-ui.log", "w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"make mlflow-ui exited: {(out / 'mlflow-ui.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return process
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise RuntimeError("the MLflow UI did not answer within 180 s")


def stop(process: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def check(uri: str, port: int, out: Path, browser: str, driver_path: str) -> list[str]:
    """Drive Chromium through the comparison; the failures, each with what the page showed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from lightning_asr.study.tracking import client_for
    from lightning_asr.study.ui import runs_links

    client = client_for(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    base = f"http://127.0.0.1:{port}"
    link = next(line.split(": ", 1)[1] for line in runs_links(uri, "127.0.0.1", port) if f" {EXPERIMENT}:" in line)

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    failures: list[str] = []

    def page_text() -> str:
        return driver.find_element(By.TAG_NAME, "body").text

    def wait_for(texts: list[str], seconds: float = 40) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            body = page_text()
            if all(t in body for t in texts):
                return True
            time.sleep(0.5)
        return False

    def step(name: str, url: str, texts: list[str]) -> None:
        driver.get(url)
        found = wait_for(texts)
        time.sleep(1.5)  # charts and images finish drawing
        driver.save_screenshot(str(out / f"{name}.png"))
        if not found:
            missing = [t for t in texts if t not in page_text()]
            failures.append(f"{name}: {missing} not on {url}; the page shows: {page_text()[:400]!r}")

    try:
        step("1-experiment-runs", link, [parent.info.run_name])
        if "/runs" not in driver.current_url:
            failures.append(f"1-experiment-runs: the link landed on {driver.current_url}, not on the runs table")
        expand = driver.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
        if expand:  # child runs are nested under their parent, folded
            expand[0].click()
        found = wait_for([r.info.run_name for r in children])
        driver.save_screenshot(str(out / "2-child-runs.png"))
        if not found:
            failures.append(f"2-child-runs: the children are not listed under the parent: {page_text()[:400]!r}")
        # the smoke run's backward gain is undefined (nothing to avoid), and undefined metrics are not logged
        logged = [m for m in METRICS if any(m in r.data.metrics for r in children)]
        unlogged = sorted(set(METRICS) - set(logged))
        if unlogged:
            print(f"ui-check: {unlogged} logged by no child run of this store, so not looked for")
        ids = ",".join(f'"{r.info.run_id}"' for r in children)
        step(
            "3-compare-children",
            f'{base}/#/compare-runs?runs=[{ids}]&experiments=["{experiment.experiment_id}"]&{MODEL_TRAINING}',
            [r.info.run_name for r in children] + logged,
        )
        artifacts = f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts"
        step("4-parent-comparison-md", f"{artifacts}/comparison.md?{MODEL_TRAINING}", ["comparison.md", "tradeoff.png"])
        entries = driver.find_elements(By.XPATH, "//*[normalize-space(text())='tradeoff.png']")
        if entries:  # the artifact tree: the page opens on its first text file whatever the URL names
            entries[0].click()

        def image_shown() -> bool:  # the viewer's title names the file, and it draws the image from a blob
            title = "tradeoff.png" in page_text().split("Path:")[0].splitlines()[-2:]
            return title and bool(driver.find_elements(By.CSS_SELECTOR, "img[src^='blob:']"))

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not image_shown():
            time.sleep(0.5)
        time.sleep(1.5)
        driver.save_screenshot(str(out / "5-parent-tradeoff-png.png"))
        if not image_shown():
            failures.append(f"5-parent-tradeoff-png: tradeoff.png is not shown: {page_text()[:400]!r}")
    finally:
        driver.quit()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_asr.study.ui_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default=str(ROOT / "runs" / "ui-check"))
    parser.add_argument("--chromium", help="Chromium binary (default: chromium on PATH)")
    args = parser.parse_args(argv)
    from lightning_asr.console import quiet

    quiet()
    try:
        browser, driver = find_browser(args.chromium)
    except Missing as err:
        print(f"ui-check: {err}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = smoke_store(out)
    from lightning_asr.client import free_port

    port = free_port()
    process = start_ui(uri, out, port)
    try:
        failures = check(uri, port, out, browser, driver)
    finally:
        stop(process)
    for failure in failures:
        print(f"ui-check FAILED {failure}", file=sys.stderr)
    shots = sorted(p.name for p in out.glob("*.png"))
    print(
        f"ui-check: {'passed' if not failures else f'{len(failures)} check(s) failed'}; screenshots in {out}: {shots}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
