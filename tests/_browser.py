"""Browser tests' harness: a headless Chromium through selenium, offline and observed.

Debian's ``chromium`` and ``chromium-driver`` are used as installed (never a
driver or browser downloaded by Selenium Manager: both paths are given).
Tests marked ``browser`` use the ``browser`` fixture (tests/conftest.py):

    def test_page(browser, tmp_path):
        page = browser.open(tmp_path / "map.html")
        assert page.console_errors() == []
        assert page.external_requests() == []
        assert page.broken_images() == []
        page.screenshot(tmp_path / "map.png")  # checked not blank, path printed

Every request the page makes is read from Chrome's DevTools performance log;
host names other than 127.0.0.1/localhost do not even resolve
(``--host-resolver-rules``), so a page that needs the internet fails
visibly here instead of working by luck on a connected machine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

INSTALL = "apt-get install chromium chromium-driver (and pip install selenium)"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WINDOW = (1280, 900)

__all__ = ["Browser", "Page", "chromium_missing", "open_browser", "screenshot_stats"]


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_missing() -> str | None:
    """Why browser tests cannot run here (None when they can)."""
    missing = []
    if _binary("chromium", "chromium-browser") is None:
        missing.append("chromium")
    if _binary("chromedriver") is None:
        missing.append("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        return f"no {', '.join(missing)} found: {INSTALL}"
    return None


def is_local(url: str) -> bool:
    """Whether a request stays on this machine (file, data, blob, about, loopback)."""
    if url.startswith(LOCAL_SCHEMES):
        return True
    for scheme in ("http://", "https://", "ws://", "wss://"):
        if url.startswith(scheme):
            host = url[len(scheme) :].split("/", 1)[0]
            host = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            return host in LOCAL_HOSTS
    return False


def screenshot_stats(png: Path) -> dict[str, float]:
    """Pixel statistics of a screenshot: grey-level spread and distinct colours (quantised)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int32)
    grey = rgb.mean(axis=2)
    coarse = (rgb // 16).reshape(-1, 3)
    colours = np.unique(coarse[:, 0] * 256 + coarse[:, 1] * 16 + coarse[:, 2]).size
    return {"grey_std": float(grey.std()), "colours": float(colours)}


class Page:
    """A page open in the browser, with what it logged and requested since it was opened."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url
        self._console: list[dict[str, Any]] = []
        self._requests: list[str] = []

    def _drain(self) -> None:
        self._console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self._requests.append(message["params"]["request"]["url"])

    def wait_loaded(self, timeout: float = 20) -> None:
        """Wait for the document and its images to finish loading (or failing), maps to settle."""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout).until(
            lambda d: d.execute_script(
                "return document.readyState === 'complete' && "
                "Array.from(document.images).every(i => i.complete) && "
                "!document.querySelector('.leaflet-zoom-anim, .leaflet-pan-anim')"
            )
        )

    def console_errors(self) -> list[dict[str, Any]]:
        """Console messages of level SEVERE (errors, failed loads, uncaught exceptions)."""
        self._drain()
        return [e for e in self._console if e.get("level") == "SEVERE"]

    def requests(self) -> list[str]:
        """Every URL the page requested (data: URLs shortened)."""
        self._drain()
        return [u[:40] if u.startswith("data:") else u for u in self._requests]

    def external_requests(self) -> list[str]:
        """Requests that would leave the machine (anything but file/data/blob/loopback)."""
        return [u for u in self.requests() if not is_local(u)]

    def broken_images(self) -> list[str]:
        """The ``<img>`` elements not loaded (natural width 0), by source (shortened)."""
        self.wait_loaded()
        return self.driver.execute_script(
            "return Array.from(document.images)"
            ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))"
        )

    def images(self) -> int:
        """How many ``<img>`` elements the page holds now."""
        return int(self.driver.execute_script("return document.images.length"))

    def layer_control(self) -> dict[str, list[str]]:
        """Leaflet's layer control: ``{group: [entry labels]}`` (group "" without groups)."""
        return self.driver.execute_script(
            """
            const out = {};
            document.querySelectorAll('.leaflet-control-layers-list label').forEach(label => {
              if (!label.querySelector('input')) return;  // a group's name
              const group = label.closest('.leaflet-control-layers-group');
              const name = group
                ? group.querySelector('.leaflet-control-layers-group-name').textContent.trim()
                : '';
              (out[name] = out[name] || []).push(label.textContent.trim());
            });
            return out;
            """
        )

    def click_layer(self, group: str, label: str) -> None:
        """Click one entry of the layer control (as a user steps to a year)."""
        found = self.driver.execute_script(
            """
            const [group, label] = arguments;
            for (const el of document.querySelectorAll('.leaflet-control-layers-list label')) {
              if (!el.querySelector('input')) continue;
              const g = el.closest('.leaflet-control-layers-group');
              const name = g ? g.querySelector('.leaflet-control-layers-group-name')
                                .textContent.trim() : '';
              if (name === group && el.textContent.trim() === label) {
                el.querySelector('input').click(); return true;
              }
            }
            return false;
            """,
            group,
            label,
        )
        assert found, f"no entry {label!r} in group {group!r} of the layer control"

    def screenshot(self, path: Path) -> dict[str, float]:
        """Save a PNG of the window, print its path, and return its pixel statistics."""
        self.wait_loaded()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return screenshot_stats(path)


class Browser:
    """One headless Chromium, a fresh :class:`Page` per :meth:`open`."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open(self, target: Path | str) -> Page:
        """Open a local file (a path) or a URL and wait until it and its images loaded."""
        url = Path(target).resolve().as_uri() if isinstance(target, Path) else target
        self.driver.get_log("browser")  # drop what earlier pages logged
        self.driver.get_log("performance")
        self.driver.get(url)
        page = Page(self.driver, url)
        page.wait_loaded()
        return page


@contextmanager
def open_browser() -> Iterator[Browser]:
    """Start headless Chromium (Debian's, with its own chromedriver); quit it afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager must never download a driver or browser: both paths are given.
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--allow-file-access-from-files",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(_binary("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
