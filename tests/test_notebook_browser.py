"""The notebook's views as a person sees them: JupyterLab in headless Chromium, driven by Playwright.

JupyterLab runs on 127.0.0.1 with a token, no browser of its own, a temporary HOME and Jupyter
folders, and no network (announcements and update checks off). Its kernel is ipykernel on this
Python. A notebook does real work — an instrumented ``openai`` call against the loopback LLM
server, a ``@sdk.tool``, a step that fails — inside ``%%session``, then lists ``%sessions``.
Chromium (the Debian package, never a downloaded build) runs the cells; the test reads the
rendered DOM and keeps screenshots under docs/images/ for docs/notebooks.md, in the light and the
dark theme.

Heavy (a JupyterLab server and a browser): runs only with ``python -m pytest -m browser``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from llm_server import INPUT_TOKENS, OUTPUT_TOKENS, LLMServer

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KERNEL = "python3"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.subprocess, pytest.mark.timeout(300)]

SETUP = """\
import os
import openai
import sdk

sdk.init(service_name="notebook-demo", auto_start_session=True, capture_content=True)
%load_ext notebook_ext
client = openai.OpenAI(base_url=os.environ["LLM_URL"], api_key="demo", max_retries=0)


@sdk.tool
def lookup_order(order_id):
    return {"id": order_id, "amount": 42.0, "status": "delivered"}


@sdk.task
def charge_card(order):
    raise ValueError(f"card declined for order {order['id']}")"""

SESSION = """\
%%session refund-flow --user u-42 --tag demo
order = lookup_order("A-1017")
answer = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": f"Should we refund order {order['id']}?"}],
)
try:
    charge_card(order)
except ValueError as exc:
    print("charge failed:", exc)"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def wanted() -> None:
    """Skip when Chromium, JupyterLab or Playwright is missing (the marker keeps the default run out)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium: apt-get install -y chromium (the Debian package)")
    for module, extra in (("jupyterlab", "jupyterlab"), ("playwright", "playwright")):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed: pip install {extra} (it is in the dev extra)")


@pytest.fixture(scope="module")
def lab(wanted: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """JupyterLab on 127.0.0.1 with a token, serving a folder that holds the demo notebook."""
    home = tmp_path_factory.mktemp("lab-home")
    work = tmp_path_factory.mktemp("lab-work")
    kernels = home / "jupyter-data" / "kernels" / KERNEL  # ipykernel's own name: no kernel to choose
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            }
        )
    )
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(SETUP),
            nbformat.v4.new_code_cell(SESSION),
            nbformat.v4.new_code_cell("%sessions"),
        ],
        metadata={
            "kernelspec": {"name": KERNEL, "display_name": "Python 3 (ipykernel)", "language": "python"}
        },
    )
    nbformat.write(nb, work / "demo.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    llm = LLMServer().__enter__()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    env.update(
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
        JUPYTER_DATA_DIR=str(home / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
        JUPYTER_PATH=str(home / "jupyter-data"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
        IPYTHONDIR=str(home / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",
        SESSIONTRACE_RAISE_INTERNAL_ERRORS="1",
        LLM_URL=llm.openai_url,
    )
    log = (home / "lab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run JupyterLab's own commands
            "--allow-root",  # CI runs as root; the server listens on 127.0.0.1 only, with a token
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{(home / 'lab.log').read_text()}")
            time.sleep(0.25)
        yield {"base": base, "token": token, "work": work, "log": home / "lab.log"}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        llm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def page(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The demo notebook open in headless Chromium, every cell run."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            tab = browser.new_page()
            tab.goto(f"{lab['base']}/lab/tree/demo.ipynb?token={lab['token']}")
            tab.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            tab.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            try:
                run_all(tab)
                tab.wait_for_selector(".sessiontrace-sessions", timeout=60_000)
            except Exception as exc:
                shot = (
                    Path(os.environ.get("SESSIONTRACE_BROWSER_DEBUG", str(tmp_path_factory.mktemp("failed"))))
                    / "page.png"
                )
                tab.screenshot(path=str(shot))
                raise AssertionError(
                    f"the cells did not run to the end; the page: {shot}; the server: {lab['log']}"
                ) from exc
            yield tab
        finally:
            browser.close()


def run_all(tab: Any) -> None:
    """Run every cell as a person does: select the first cell, then Shift+Enter, each once the one before has run."""
    dialog = tab.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=10_000)
    except Exception:  # no dialog: the notebook's kernel started by itself
        pass
    else:
        dialog.locator("button", has_text="Select").click()
        dialog.wait_for(state="detached")
    tab.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    cells = tab.locator(".jp-Notebook .jp-Cell")
    cells.first.locator(".jp-InputPrompt").click()
    for index in range(cells.count()):
        tab.keyboard.press("Shift+Enter")
        prompt = cells.nth(index).locator(".jp-InputPrompt")
        tab.wait_for_function(
            "e => /\\[\\d+\\]/.test(e.textContent)", arg=prompt.element_handle(), timeout=60_000
        )


def test_session_timeline_in_jupyterlab(page: Any) -> None:
    """In JupyterLab the %%session timeline shows each span as a row with a bar, the LLM call's tokens and cost, and the failed step's error."""
    timeline = page.locator(".sessiontrace-timeline").first
    timeline.wait_for(timeout=60_000)
    rows = timeline.locator(".st-row")
    assert rows.count() == 4
    kinds = [rows.nth(i).get_attribute("data-kind") for i in range(4)]
    assert kinds == ["session", "tool", "llm", "task"]
    bars = timeline.locator(".st-bar")
    assert bars.count() == 4
    widths = [bars.nth(i).bounding_box()["width"] for i in range(4)]
    assert all(width >= 2 for width in widths)
    assert widths[0] == max(widths)  # the session spans the whole axis
    llm = timeline.locator(".st-row[data-kind='llm']")
    assert llm.locator(".st-tokens").inner_text() == f"{INPUT_TOKENS}\u2192{OUTPUT_TOKENS}"
    assert llm.locator(".st-cost").inner_text().startswith("$")
    failed = timeline.locator(".st-row[data-status='error']")
    assert failed.get_attribute("data-kind") == "task"
    assert "ValueError: card declined for order A-1017" in timeline.locator(".st-error").first.inner_text()
    error_color = timeline.locator(".st-error").first.evaluate("e => getComputedStyle(e).color")
    text_color = timeline.locator(".st-name").first.evaluate("e => getComputedStyle(e).color")
    assert error_color != text_color
    assert "charge failed: card declined" in page.locator(".jp-OutputArea-output").nth(0).inner_text() or (
        "charge failed" in page.content()
    )
    IMAGES.mkdir(parents=True, exist_ok=True)
    timeline.screenshot(path=str(IMAGES / "notebook-timeline.png"))


def test_sessions_list_in_jupyterlab(page: Any) -> None:
    """In JupyterLab ``%sessions`` lists the session with its user, state, spans, LLM calls, tokens and cost."""
    listing = page.locator(".sessiontrace-sessions").first
    listing.wait_for(timeout=60_000)
    header = [c.strip() for c in listing.locator("th").all_inner_texts()]
    assert header[:10] == [
        "id",
        "name",
        "user",
        "state",
        "started",
        "duration",
        "spans",
        "LLM calls",
        "tokens",
        "cost",
    ]
    row = listing.locator("tr", has_text="refund-flow")
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    assert cells[1:4] == ["refund-flow", "u-42", "success"]
    assert cells[6:9] == ["4", "1", str(INPUT_TOKENS + OUTPUT_TOKENS)]
    assert cells[9].startswith("$")
    listing.screenshot(path=str(IMAGES / "notebook-sessions.png"))


def test_timeline_reads_in_the_dark_theme(page: Any) -> None:
    """With JupyterLab's dark theme the timeline's text is light on a dark page (theme variables, no fixed colours)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel", has_text="JupyterLab Dark").first.click()
    page.wait_for_function("document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
    timeline = page.locator(".sessiontrace-timeline").first

    def luminance(css: str) -> float:
        parts = [float(p) for p in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
        return (
            sum(weight * value for weight, value in zip((0.2126, 0.7152, 0.0722), parts, strict=True)) / 255
        )

    name = timeline.locator(".st-name").first.evaluate("e => getComputedStyle(e).color")
    background = page.locator(".jp-OutputArea-output").first.evaluate(
        "e => { for (let n = e; n; n = n.parentElement) { const c = getComputedStyle(n).backgroundColor;"
        " if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c; } return 'rgb(255, 255, 255)'; }"
    )
    assert luminance(name) > 0.6 > luminance(background)
    timeline.screenshot(path=str(IMAGES / "notebook-timeline-dark.png"))
