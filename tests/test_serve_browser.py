"""The search page in a real headless Chromium (Debian's chromium and chromium-driver; Selenium Manager is
never asked to download a browser): type a query, submit, click a result, and the page's player plays the
indexed video from that result's start, seeking through HTTP Range requests; for an index of files and for
one of shards."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
uvicorn = pytest.importorskip("uvicorn", reason="needs uvicorn: pip install 'vidclip[serve]'")
pytest.importorskip("fastapi", reason="needs fastapi: pip install 'vidclip[serve]'")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.test_serve import build_index, make_videos  # noqa: E402
from vidclip.commands.serve import bind  # noqa: E402
from vidclip.index import VideoIndex  # noqa: E402
from vidclip.index.web import DEFAULT_K, create_app  # noqa: E402


@pytest.fixture(scope="module", params=["files", "shards"])
def index(request, tmp_path_factory):
    """A real index (tiny model) of 2 videos of 20 s in 4-second windows every 2 s: 18 rows, built from the
    files or from WebDataset shards of them (the page then plays each sample from its byte range in the tar).
    The videos are H.264 yuv420p MP4, which Debian's chromium plays (VP9 WebM too; both were tried)."""
    root = tmp_path_factory.mktemp(f"browser-{request.param}")
    make_videos(root / "videos", 2, frames=200)
    source = root / "videos"
    if request.param == "shards":
        pytest.importorskip("webdataset", reason="webdataset is not installed (pip install webdataset)")
        from vidclip.prepare import write_shards

        write_shards([str(source)], root / "shards", shard_size=1, num_workers=1)
        source = root / "shards" / "videos-*.tar"
    return VideoIndex.load(build_index(root, source, "--segment", "4", "--stride", "2"))


@pytest.fixture(scope="module")
def url(index):
    """The app served by uvicorn in a thread on a free port of 127.0.0.1."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(index), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        WebDriverWait(None, 30, poll_frequency=0.05).until(lambda _: server.started)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_search_click_and_play_from_the_result_start(browser, url, index):
    browser.get(url)
    box = browser.find_element(By.NAME, "q")
    box.send_keys("a square moving across the frame")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    cards = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "ol.results a[data-src]")
    )
    assert len(cards) == DEFAULT_K and "q=a+square+moving" in browser.current_url
    images = browser.find_elements(By.CSS_SELECTOR, "ol.results img")
    WebDriverWait(browser, 30).until(
        lambda d: all(d.execute_script("return arguments[0].naturalHeight", i) for i in images)
    )
    assert {browser.execute_script("return arguments[0].naturalHeight", i) for i in images} == {160}

    top = index.search("a square moving across the frame", k=DEFAULT_K)
    assert [float(c.get_attribute("data-start")) for c in cards] == pytest.approx(
        top.start.tolist(), abs=1e-3
    )
    card = next(c for c in cards if float(c.get_attribute("data-start")) > 0)  # a seek, not a play from 0
    start, src = float(card.get_attribute("data-start")), card.get_attribute("data-src")
    card.click()
    player = browser.find_element(By.ID, "player")
    state = "return [arguments[0].currentTime, arguments[0].paused, arguments[0].played.length ? arguments[0].played.start(0) : -1]"
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(state, player)[0] >= start)
    current, paused, first_played = browser.execute_script(state, player)
    assert current >= start and not paused
    assert first_played >= start - 0.5  # it started playing at the result's start, not at 0
    assert player.get_attribute("src") == url.rstrip("/") + src
    assert "playing" in card.find_element(By.XPATH, "..").get_attribute("class")

    errors = [
        e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]
    ]
    assert errors == []  # no script error, no Content-Security-Policy violation
