"""The chat page in headless Chromium: a streamed reply, then a crisis message whose reply shows the
banner with the chosen locale's resources before the model's words. Screenshots go to
test-artifacts/ (gitignored).

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
separated by NUL bytes on fds 3 and 4), so no websocket library or browser download is needed.
Skips when no Chromium/Chrome binary is installed (apt-get install chromium).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_chat_session import visible_tiny

from tunesmith.chat.crisis import CrisisLayer
from tunesmith.chat.server import ChatBackend, start_in_thread

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium/google-chrome on PATH (apt-get install chromium)")


class DevTools:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, user_data_dir: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds():  # the browser expects its command pipe on fd 3 and its reply pipe on fd 4
            # copy both ends above 9 first, so placing one cannot overwrite the other
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [
                BROWSER,
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                f"--user-data-dir={user_data_dir}",
                "--window-size=1000,900",
                "about:blank",
            ],
            # close_fds=False: close_fds would run after preexec_fn and close 3 and 4 again (Python
            # opens its own fds close-on-exec, so little else is inherited)
            preexec_fn=child_fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:  # events (no id) are ignored
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            data = os.read(self._from_browser, 1 << 16)
            if not data:
                raise RuntimeError("browser closed the DevTools pipe")
            self._buf += data

    def attach_page(self) -> None:
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(expression)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tokenizer):
    backend = ChatBackend(
        visible_tiny(tiny_model_dir), tokenizer, crisis=CrisisLayer(), model_name="tiny-test", max_new_tokens=12
    )
    srv, thread = start_in_thread(backend, "127.0.0.1", 0)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


STATE = """JSON.stringify((() => {
  const m = document.querySelectorAll('.msg.assistant')[%d];
  if (!m) return null;
  const banner = m.querySelector('.banner'), body = m.querySelector('.body');
  return {state: m.dataset.state, chunks: Number(m.dataset.chunks), first: m.dataset.firstChunk || '',
          body: body.textContent, bannerShown: !banner.hidden && banner.offsetHeight > 0,
          banner: banner.textContent, bannerAbove: banner.hidden ? null
            : banner.getBoundingClientRect().bottom <= body.getBoundingClientRect().top + 1,
          badges: [...m.querySelectorAll('.badge')].map(b => b.textContent)};
})())"""


def send_message(dev: DevTools, text: str) -> None:
    dev.js(
        f"document.getElementById('input').value = {json.dumps(text)};"
        "document.getElementById('form').requestSubmit(); true"
    )


def test_chat_page_streams_and_shows_crisis_banner_first(server, tmp_path):
    dev = DevTools(tmp_path / "profile")
    try:
        dev.attach_page()
        dev.send("Page.enable")
        dev.send("Page.navigate", {"url": server.url + "/"})
        dev.wait_for("document.readyState === 'complete' && document.getElementById('locale').options.length > 1")

        send_message(dev, "Hi! Can we talk for a bit?")
        dev.wait_for("(document.querySelectorAll('.msg.assistant')[0] || {dataset: {}}).dataset.state === 'done'")
        first = json.loads(dev.js(STATE % 0))
        dev.screenshot(ARTIFACTS / "chat-1-reply.png")
        assert first["body"].strip(), first  # the model's words arrived ...
        assert first["chunks"] > 2  # ... as a stream of pieces
        assert not first["bannerShown"] and not first["first"].startswith("⚠")

        dev.js(
            "const s = document.getElementById('locale'); s.value = 'en_GB';s.dispatchEvent(new Event('change')); true"
        )
        send_message(dev, "I have decided to end my life tonight.")
        dev.wait_for("(document.querySelectorAll('.msg.assistant')[1] || {dataset: {}}).dataset.state === 'done'")
        crisis = json.loads(dev.js(STATE % 1))
        dev.screenshot(ARTIFACTS / "chat-2-crisis.png")
        assert crisis["bannerShown"] and crisis["bannerAbove"], crisis
        assert "Samaritans" in crisis["banner"] and "116 123" in crisis["banner"]
        assert crisis["first"].startswith("⚠")  # the stream itself opened with the resources
        assert crisis["body"].strip() and "Samaritans" not in crisis["body"]  # model words below, once
        assert [b for b in crisis["badges"] if b.startswith("crisis")] == ["crisis: self harm"]

        # a calm message later in the same chat: the resources stay pinned above the conversation
        send_message(dev, "Thanks. Can you suggest a film for tonight?")
        dev.wait_for("(document.querySelectorAll('.msg.assistant')[2] || {dataset: {}}).dataset.state === 'done'")
        sticky = json.loads(
            dev.js(
                "JSON.stringify({shown: !document.getElementById('sticky').hidden && "
                "document.getElementById('sticky').offsetHeight > 0, "
                "text: document.getElementById('sticky-text').textContent})"
            )
        )
        dev.screenshot(ARTIFACTS / "chat-3-sticky.png")
        assert sticky["shown"] and "Samaritans" in sticky["text"], sticky
        dev.js("document.getElementById('reset').click(); true")
        assert dev.js("String(document.getElementById('sticky').hidden)") == "true"
    finally:
        dev.close()
