"""report.html in a real browser: headless Chromium loads every embedded image, and the
untrusted sample text runs no script. A screenshot goes to test-artifacts/ for a human look.

How: the report forbids all scripts (CSP `default-src 'none'`), so the check runs on a copy
whose CSP admits exactly one extra script by nonce. That script waits for the load event,
counts `<img>` elements with `naturalWidth > 0`, and writes the counts into the DOM, which
`chromium --dump-dom` prints. The copy keeps the report's `img-src data:` rule, so an image
that loads here also loads in the real report. Skipped when no Chromium is installed
(Debian: `apt-get install chromium`; or point TUNESMITH_CHROMIUM at a binary).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import images, make_empathy_run, make_gsm8k_run

from tunesmith.reporting.report import CSP, write_report

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # gitignored
NONCE = "tunesmith-img-check"
CHECK_SCRIPT = f"""<script nonce="{NONCE}">
addEventListener("load", () => {{
  const imgs = [...document.images];
  const out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = JSON.stringify({{
    total: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    widths: imgs.map(i => i.naturalWidth),
    pwned: document.body.dataset.pwned || null,
  }});
  document.body.appendChild(out);
}});
</script>"""


def chromium() -> str:
    for cand in (
        os.environ.get("TUNESMITH_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
        "chrome",
    ):
        if cand and (path := shutil.which(cand)):
            return path
    pytest.skip("no Chromium found (apt-get install chromium, or set TUNESMITH_CHROMIUM)")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start;
    # a throwaway profile keeps runs independent of each other and of any user profile
    cmd = [
        binary,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def instrumented_copy(report: Path, dest: Path) -> Path:
    page = report.read_text(encoding="utf-8")
    assert page.count(CSP) == 1
    page = page.replace(CSP, CSP.replace("default-src 'none';", f"default-src 'none'; script-src 'nonce-{NONCE}';"))
    dest.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    return dest


def image_check(binary: str, page: Path, profile: Path) -> dict:
    proc = run_chromium(binary, profile, "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    m = re.search(r'<pre id="img-check">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no image check in the dumped DOM (rc {proc.returncode}); stderr tail:\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


@pytest.mark.parametrize("make_run, expected_images", [(make_empathy_run, 5), (make_gsm8k_run, 2)])
def test_report_renders_in_headless_chromium(tmp_path, make_run, expected_images):
    binary = chromium()
    run = make_run(tmp_path)
    _, report = write_report(run)
    assert len(images(report.read_text(encoding="utf-8"))) == expected_images

    # moved away from the run dir (and its plots/): the page must still be whole
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    page = instrumented_copy(report, moved / "report.html")
    result = image_check(binary, page, tmp_path / "profile")
    assert result["total"] == expected_images
    assert result["loaded"] == result["total"], f"images that did not load: {result['widths']}"
    assert all(w > 100 for w in result["widths"])
    assert result["pwned"] is None  # the <script>/onerror in the empathy sample stayed text

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report_{run.name}.png"
    shot.unlink(missing_ok=True)
    proc = run_chromium(
        binary, tmp_path / "profile", "--window-size=1280,3000", f"--screenshot={shot}", report.as_uri()
    )
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}); stderr tail:\n{proc.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_image_check_notices_a_broken_image(tmp_path):
    # the negative control: the check above would catch an image that fails to decode
    binary = chromium()
    _, report = write_report(make_gsm8k_run(tmp_path))
    page = instrumented_copy(report, tmp_path / "broken.html")
    text = page.read_text(encoding="utf-8")
    page.write_text(re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,AAAA", text, count=1), encoding="utf-8")
    result = image_check(binary, page, tmp_path / "profile")
    assert result["total"] == 2 and result["loaded"] == 1
