"""``vidclip serve`` and its app (vidclip.index.web): the page and the API show the index's own results, media
are served with Range requests, only indexed files can be fetched, user text is escaped, refusals are clear."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="needs fastapi: pip install 'vidclip[serve]'")
pytest.importorskip("httpx", reason="needs httpx for TestClient: pip install -e '.[dev]'")
from fastapi.testclient import TestClient  # noqa: E402

import vidclip  # noqa: E402
from vidclip.commands import extract as extract_command  # noqa: E402
from vidclip.commands import index as index_command  # noqa: E402
from vidclip.commands import serve  # noqa: E402
from vidclip.index import (
    VideoIndex,  # noqa: E402
    web,  # noqa: E402
)
from vidclip.synthetic import index_frames, read_frame_index, write_video  # noqa: E402

FPS = 10


def make_videos(folder: Path, count: int, frames: int = 60) -> list[Path]:
    """H.264 yuv420p MP4s at FPS frames a second, 96x64, each frame's index readable from its pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        Path(write_video(folder / f"clip{i}.mp4", index_frames(frames, 64, 96), fps=FPS))
        for i in range(count)
    ]


def build_index(root: Path, videos: Path, *extra: str, seed: int = 0) -> Path:
    """A real index of ``videos`` made by ``vidclip index`` with the tiny model (random weights, seeded)."""
    torch.manual_seed(seed)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), root / "run").parent
    out = root / "index"
    args = [str(videos), "--out", str(out), "--checkpoint", str(run), "--num-workers", "0", *extra]
    assert index_command.main(args) == 0
    return out


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """3 videos of 6 s in 2-second windows every second: 15 rows, which moments=True merges."""
    root = tmp_path_factory.mktemp("served")
    make_videos(root / "videos", 3)
    return build_index(root, root / "videos", "--segment", "2", "--stride", "1")


@pytest.fixture(scope="module")
def index(index_dir):
    return VideoIndex.load(index_dir)


@pytest.fixture(scope="module")
def client(index):
    return TestClient(web.create_app(index), base_url="http://127.0.0.1")


class Cards(HTMLParser):
    """The result links (their data-* attributes), thumbnails and 'cannot play' notes of a results page."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.images, self.scripts, self.in_missing, self.missing = [], [], [], False, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "data-src" in attrs:
            self.links.append(attrs)
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            self.scripts.append(attrs)
        self.in_missing = tag == "span" and attrs.get("class") == "missing"

    def handle_data(self, data):
        if self.in_missing:
            self.missing.append(data)
            self.in_missing = False


def raw_get(app, raw_path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client normalising '..'), the way uvicorn hands it to the app."""
    path, _, query = raw_path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


# -- the page and the API ------------------------------------------------------------------------------------
def test_the_page_shows_the_index_results_in_its_order(client, index):
    response = client.get("/", params={"q": "a red square moves", "k": 4})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    cards = Cards(response.text)
    expected = index.search("a red square moves", k=4)
    assert len(cards.links) == 4
    for link, row in zip(cards.links, expected.itertuples(), strict=True):
        video_id = index.video_id(row.video)
        assert link["data-src"] == f"/media/{video_id}"
        assert float(link["data-start"]) == pytest.approx(row.start)
        assert (
            link["href"] == f"/media/{video_id}#t={row.start:.3f},{row.end:.3f}"
        )  # plays without JavaScript
    top = expected.iloc[0]
    assert f"{web.format_time(top.start)}\u2013{web.format_time(top.end)}" in response.text
    assert f"score {top.score:.3f}" in response.text
    assert Path(top.video).name in response.text
    assert cards.images[0] == f"/thumb/{index.video_id(top.video)}/{round(500 * (top.start + top.end))}.jpg"
    assert '<video id="player"' in response.text
    assert 'value="a red square moves"' in response.text  # the box keeps the query


def test_the_page_without_a_query_is_the_form_alone(client, index):
    response = client.get("/")
    assert response.status_code == 200
    assert 'name="q"' in response.text and 'name="k"' in response.text and 'name="moments"' in response.text
    assert Cards(response.text).links == [] and "<video" not in response.text
    assert f"{len(index.videos)} videos, {len(index)} vectors indexed" in response.text


def test_the_api_returns_k_results_as_the_index_ranks_them(client, index):
    body = client.get("/api/search", params={"q": "waves", "k": 3}).json()
    expected = index.search("waves", k=3)
    assert body["query"] == "waves" and body["k"] == 3 and body["moments"] is False
    assert [r["rank"] for r in body["results"]] == [1, 2, 3]
    for result, row in zip(body["results"], expected.itertuples(), strict=True):
        video_id = index.video_id(row.video)
        assert (result["video"], result["start"], result["end"]) == (row.video, row.start, row.end)
        assert result["score"] == pytest.approx(row.score)
        assert result["media_url"] == f"/media/{video_id}#t={row.start:.3f},{row.end:.3f}"
        assert result["thumbnail_url"].startswith(f"/thumb/{video_id}/") and result["available"] is True
    assert len(client.get("/api/search", params={"q": "waves"}).json()["results"]) == min(10, len(index))


def test_moments_are_asked_of_the_index(client, index):
    body = client.get("/api/search", params={"q": "waves", "k": 5, "moments": "1"}).json()
    expected = index.search("waves", k=5, moments=True)
    assert body["moments"] is True
    assert [(r["video"], r["start"]) for r in body["results"]] == list(
        zip(expected.video, expected.start, strict=True)
    )
    assert "checked" in client.get("/", params={"q": "waves", "moments": "on"}).text


@pytest.mark.parametrize("k", ["0", "101", "-3", "abc", "2.5", "9" * 30])
def test_k_outside_1_to_100_is_refused_not_clamped(client, k):
    response = client.get("/api/search", params={"q": "waves", "k": k})
    assert response.status_code == 400
    assert "k must be an integer from 1 to 100" in response.json()["error"]
    page = client.get("/", params={"q": "waves", "k": k})
    assert page.status_code == 400 and "k must be an integer from 1 to 100" in page.text
    assert Cards(page.text).links == []


def test_k_100_is_accepted(client, index):
    assert len(client.get("/api/search", params={"q": "waves", "k": 100}).json()["results"]) == min(
        100, len(index)
    )


@pytest.mark.parametrize("q", ["", "   ", "\n\t"])
def test_an_empty_query_is_a_message_not_results(client, q):
    page = client.get("/", params={"q": q})
    assert page.status_code == 400 and "the query is empty" in page.text and Cards(page.text).links == []
    api = client.get("/api/search", params={"q": q})
    assert api.status_code == 400 and "the query is empty" in api.json()["error"]
    assert client.get("/api/search").status_code == 400  # no q at all


def test_a_query_over_1000_characters_is_refused(client):
    long = "cat " * 2500
    api = client.get("/api/search", params={"q": long})
    assert api.status_code == 400
    assert api.json()["error"].startswith(f"the query is {len(long.strip())} characters long; at most 1000")
    page = client.get("/", params={"q": long})
    assert page.status_code == 400 and "at most 1000" in page.text and Cards(page.text).links == []
    assert client.get("/api/search", params={"q": "x" * 1000}).status_code == 200


def test_user_text_is_escaped_and_scripts_are_limited_to_the_page_own(client):
    attack = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    for response in (
        client.get("/", params={"q": attack}),
        client.get("/", params={"q": attack, "k": "x<b>"}),
    ):
        assert "<script>alert" not in response.text and "<img src=x" not in response.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
        assert len(Cards(response.text).scripts) == 1  # the page's own inline script, and no other
        policy = response.headers["content-security-policy"]
        assert (
            "script-src 'sha256-" in policy
            and "unsafe-inline" not in policy
            and "default-src 'none'" in policy
        )


def test_format_time():
    assert [web.format_time(s) for s in (0, 4, 4.5, 62, 3723, -1, 9.96)] == [
        "0:00", "0:04", "0:04.5", "1:02", "1:02:03", "0:00", "0:10",
    ]  # fmt: skip


# -- media and thumbnails ------------------------------------------------------------------------------------
def test_media_serves_the_indexed_file_with_range_requests(client, index):
    data = index.video_file(1).read_bytes()
    whole = client.get("/media/1")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    part = client.get("/media/1", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == data[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(data)}"
    tail = client.get("/media/1", headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.status_code == 206 and tail.content == data[-10:]


def test_a_thumbnail_is_the_frame_at_the_middle_of_the_result(client, index):
    result = client.get("/api/search", params={"q": "waves", "k": 1}).json()["results"][0]
    response = client.get(result["thumbnail_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (240, 160)  # 96x64 frames, 160 pixels high, the aspect kept
    middle = (result["start"] + result["end"]) / 2
    assert read_frame_index(np.asarray(image.convert("RGB"))) == int(middle * FPS)
    assert (
        client.get(f"/thumb/{result['video_id']}/999999999.jpg").status_code == 200
    )  # past the end: the last


@pytest.mark.parametrize(
    "path",
    [
        "/media/../../etc/passwd",
        "/media/..%2f..%2fetc%2fpasswd",
        "/media/%2e%2e%2f",
        "/media/%2Fetc%2Fpasswd",
        "/media/-1",
        "/media/999",
        "/media/3",
        "/media/1.0",
        "/media/ 1",
        "/media/0x1",
        "/media/",
        "/thumb/..",
        "/thumb/../0/1.jpg",
        "/thumb/0/..%2f..%2fetc%2fpasswd.jpg",
        "/thumb/999/1000.jpg",
        "/thumb/0/-5.jpg",
        "/static/../../etc/passwd",
    ],
)
def test_only_indexed_files_can_be_fetched(client, index, path):
    status, body = raw_get(client.app, path)
    assert status == 404, (path, status, body[:200])
    files = [index.video_file(i).read_bytes()[:64] for i in range(len(index.videos))]
    assert b"root:" not in body and not any(body.startswith(head) for head in files)


def test_unknown_hosts_are_refused_against_dns_rebinding(client):
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 400
    assert client.get("/", headers={"Host": "localhost:8000"}).status_code == 200


def test_no_docs_pages_that_would_load_scripts_from_a_cdn(client):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404


def test_a_video_moved_since_indexing_is_reported_not_an_error(tmp_path):
    files = make_videos(tmp_path / "videos", 2, frames=30)
    index = VideoIndex.load(build_index(tmp_path, tmp_path / "videos"))  # whole videos: one row each
    client = TestClient(web.create_app(index), base_url="http://127.0.0.1")
    moved = index.video_id(str(files[0]))
    files[0].rename(tmp_path / "elsewhere.mp4")
    page = client.get("/", params={"q": "anything", "k": 6})
    assert page.status_code == 200
    cards = Cards(page.text)
    assert [link["data-src"] for link in cards.links] == [f"/media/{1 - moved}"]
    assert (
        len(cards.missing) == 1
        and str(files[0]) in cards.missing[0]
        and cards.missing[0].startswith("cannot play: ")
    )
    media = client.get(f"/media/{moved}")
    assert media.status_code == 404
    assert (
        media.json()["error"] == f"video {str(files[0])!r} was indexed at {files[0]} but is no longer there"
    )
    assert client.get(f"/thumb/{moved}/500.jpg").status_code == 404
    results = client.get("/api/search", params={"q": "anything", "k": 6}).json()["results"]
    assert {r["video_id"]: r["available"] for r in results} == {moved: False, 1 - moved: True}


def test_a_search_the_index_refuses_is_a_message_not_a_traceback(tmp_path):
    make_videos(tmp_path / "videos", 2, frames=30)
    out = build_index(tmp_path, tmp_path / "videos")
    torch.manual_seed(
        1
    )  # the checkpoint's weights change after the build: the index refuses to embed queries
    vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), tmp_path / "run")
    client = TestClient(web.create_app(VideoIndex.load(out)), base_url="http://127.0.0.1")
    page = client.get("/", params={"q": "anything"})
    assert page.status_code == 500 and "the search failed: " in page.text and Cards(page.text).links == []
    api = client.get("/api/search", params={"q": "anything"})
    assert api.status_code == 500 and api.json()["error"].startswith("the search failed: ")


def test_an_index_of_embeddings_has_no_end_times(tmp_path):
    """``vidclip index --from-embeddings`` knows no durations: end is JSON null and the page shows no range."""
    files = make_videos(tmp_path / "videos", 2, frames=30)
    torch.manual_seed(0)
    run = vidclip.save_checkpoint(vidclip.create_model("tiny", num_frames=4), tmp_path / "run").parent
    extract = [str(tmp_path / "videos"), "--out", str(tmp_path / "emb"), "--checkpoint", str(run)]
    assert extract_command.main([*extract, "--num-workers", "0"]) == 0
    assert (
        index_command.main(["--from-embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "index")])
        == 0
    )
    client = TestClient(web.create_app(VideoIndex.load(tmp_path / "index")), base_url="http://127.0.0.1")
    results = client.get("/api/search", params={"q": "anything"}).json()["results"]
    assert len(results) == 2 and all(r["end"] is None and r["start"] == 0 for r in results)
    assert {r["media_url"] for r in results} == {"/media/0#t=0.000", "/media/1#t=0.000"}
    page = client.get("/", params={"q": "anything"})
    assert page.status_code == 200 and len(Cards(page.text).links) == 2 and "\u2013" not in page.text
    thumb = client.get(results[0]["thumbnail_url"])
    assert (
        thumb.status_code == 200 and read_frame_index(np.asarray(Image.open(io.BytesIO(thumb.content)))) == 0
    )
    assert {str(f) for f in files} == {r["video"] for r in results}


def test_importing_vidclip_and_the_web_module_loads_no_web_framework():
    code = "import sys, vidclip, vidclip.index.web; print(sorted({'fastapi', 'starlette', 'uvicorn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the command ---------------------------------------------------------------------------------------------
def test_a_missing_index_is_one_line_and_exit_2(tmp_path, capsys):
    assert serve.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidclip serve: error: ") and "nowhere" in err and "\n" not in err


def test_a_port_in_use_is_one_line_and_exit_2(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"^port {port} on 127.0.0.1 is in use; pass --port$"):
            serve.bind("127.0.0.1", port)


def test_without_fastapi_the_command_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # an import of it raises ImportError
    assert serve.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"vidclip serve: error: {serve.INSTALL}"
    assert "pip install 'vidclip[serve]'" in serve.INSTALL


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_bad_port_is_a_usage_error(port, capsys):
    with pytest.raises(SystemExit) as done:
        serve.parse_args(["idx", "--port", port])
    assert done.value.code == 2 and "--port" in capsys.readouterr().err


def test_loopback_addresses():
    assert all(map(serve.is_loopback, ["127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(serve.is_loopback, ["0.0.0.0", "::", "192.168.1.2", "example.com", ""]))


def http_get(port: int, raw_path: str) -> tuple[int, bytes]:
    """One GET over a socket, the request line exactly as written (a browser or curl would normalise it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.slow
def test_the_command_serves_until_stopped(index_dir, tmp_path):
    """The real command in a process: --port 0 picks a free port, the printed URL answers, '..' paths sent
    raw to uvicorn never leave the index, and Ctrl-C (SIGINT) stops it with status 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidclip", "serve", str(index_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        line = proc.stdout.readline()
        assert "open http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.split("open http://127.0.0.1:")[1].split("/")[0])
        status, body = http_get(port, "/api/search?q=waves&k=2")
        assert status == 200 and len(json.loads(body)["results"]) == 2
        for path in (
            "/media/../../../../etc/passwd",
            "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/../etc/passwd",
        ):
            status, body = http_get(port, path)
            assert status in (400, 404) and b"root:" not in body, path
        assert http_get(port, "/media/0")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert (
        proc.returncode == 0 and "Traceback" not in err and err.strip().endswith("vidclip serve: stopped")
    ), err


def test_a_non_loopback_host_is_warned_about(index_dir, capsys):
    with socket.socket() as busy:  # 127.0.0.1:port is taken, so 0.0.0.0:port is too: nothing is served
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve.main([str(index_dir), "--host", "0.0.0.0", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 is not a loopback address" in err and f"port {port} on 0.0.0.0 is in use" in err
