"""report.html: self-contained, and rendered by a real headless browser (Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TFLITE = ROOT / "benchmarks" / "models" / "tiny_unet_int8.tflite"
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    # 180 KB: the plan must spill (the report's spill section has something to say).
    run = subprocess.run([sys.executable, "-m", "planner", "solve", TFLITE, "--budget", "180KB",
                          "--time-limit", "20", "-o", out], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out / "report.html"


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_report_is_self_contained_and_complete(report: Path) -> None:
    import csv

    html = report.read_text()
    parser = _Collect()
    parser.feed(html)
    assert parser.refs == [] and "script" not in parser.tags  # nothing to fetch or run
    for section in ("summary", "bounds", "layout", "spills", "tensors"):
        assert f"id='{section}'" in html
    assert "<svg" in html and "DOES NOT FIT" not in html
    tensors = list(csv.DictReader((report.parent / "tensors.csv").open()))
    assert html.count("<tr>") >= len(tensors)
    assert "spill@" in html and "idle between uses" in html


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed")
def test_chromium_renders_the_report(report: Path, tmp_path: Path) -> None:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    # What the browser built: the tables' rows and the inline SVG's segments.
    assert dom.stdout.count("<tr>") == report.read_text().count("<tr>")
    assert len(re.findall(r"class=\"seg\"|class='seg'", dom.stdout)) > 10
    png = tmp_path / "shot.png"
    shot = subprocess.run([BROWSER, *flags, f"--screenshot={png}", "--window-size=1280,2000",
                           report.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.stat().st_size > 10_000  # a page was painted
