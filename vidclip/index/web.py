"""The search page of ``vidclip serve``: a FastAPI app on a :class:`~vidclip.index.video_index.VideoIndex`.

``GET /`` is a server-rendered page (a form, result cards with thumbnails, a player; it works without
JavaScript), ``GET /api/search`` the same results as JSON, ``GET /media/{id}`` an indexed video (with HTTP Range
requests, so players can seek; a sample of a local shard is served from its byte range in the tar) and
``GET /thumb/{id}/{ms}.jpg`` a frame of it. Ids are positions in
``index.videos``: no path from a request ever reaches the filesystem. FastAPI is imported by
:func:`create_app` only, so ``import vidclip`` never needs it (``pip install 'vidclip[serve]'``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import math
import re
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from vidclip.data.shard_members import VideoSpan
from vidclip.index.media import MediaUnavailable, locate_media, span_response
from vidclip.index.video_index import MAX_QUERY_CHARS, check_query

MAX_K = 100  # k outside 1..MAX_K is refused (400), not clamped: the caller learns the limit
DEFAULT_K = 10
THUMB_HEIGHT = 160
MAX_THUMB_SOURCE_BYTES = 512 * 2**20  # a shard sample larger than this gets no thumbnail (it plays still)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # Host headers accepted by default (DNS rebinding)
_ID = re.compile(r"[0-9]{1,9}")


class RequestError(ValueError):
    """A search request refused with 400 and this message (the page shows it; the API returns it as JSON)."""


@dataclass(frozen=True)
class Hit:
    """One result as the page and the API show it; ``available`` is False when it cannot be played (the file
    moved since: ``problem`` says why); ``end`` is NaN where the index does not know it (built from embeddings:
    JSON null, no range shown)."""

    rank: int
    video: str
    video_id: int
    start: float
    end: float
    score: float
    available: bool
    problem: str = ""

    @property
    def known_end(self) -> bool:
        return math.isfinite(self.end)

    @property
    def media_url(self) -> str:
        end = f",{self.end:.3f}" if self.known_end else ""
        return f"/media/{self.video_id}#t={self.start:.3f}{end}"

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2 if self.known_end else self.start

    @property
    def thumbnail_url(self) -> str:
        return f"/thumb/{self.video_id}/{round(1000 * self.middle)}.jpg"

    def to_json(self) -> dict[str, Any]:
        fields = (
            "rank",
            "video",
            "video_id",
            "start",
            "end",
            "score",
            "available",
            "media_url",
            "thumbnail_url",
        )
        return {name: getattr(self, name) for name in fields} | {"end": self.end if self.known_end else None}


def parse_search(q: str | None, k: str | None, moments: str | None) -> tuple[str, int, bool]:
    """The query (checked as the index checks it), k and moments flag of a request, or RequestError."""
    try:
        query = check_query(q or "")
    except ValueError as err:
        raise RequestError(str(err)) from None
    return query, parse_k(k), parse_flag(moments)


def parse_k(k: str | None) -> int:
    if k is None or not k.strip():
        return DEFAULT_K
    try:
        value = int(k)
    except ValueError:
        raise RequestError(f"k must be an integer from 1 to {MAX_K}, got {k[:20]!r}") from None
    if not 1 <= value <= MAX_K:
        raise RequestError(f"k must be an integer from 1 to {MAX_K}, got {value}")
    return value


def parse_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "on", "yes")


def format_time(seconds: float) -> str:
    """``0:04``, ``1:02:03``, ``0:04.5``: minutes and seconds, a tenth only where there is one."""
    tenths = round(max(seconds, 0.0) * 10)
    whole, tenth = divmod(tenths, 10)
    hours, rest = divmod(whole, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
    return f"{text}.{tenth}" if tenth else text


def media_problem(index: Any, video_id: int) -> str:
    """Why ``video_id`` cannot be played now ("" when it can)."""
    try:
        locate_media(index, video_id)
    except MediaUnavailable as err:
        return str(err)
    return ""


def run_search(index: Any, query: str, k: int, moments: bool, lock: threading.Lock) -> list[Hit]:
    with lock:  # one search at a time: the text encoder gains nothing from running twice at once
        table = index.search(query, k=k, moments=moments)
    hits = []
    for row in table.head(k).itertuples(index=False):
        video_id = index.video_id(row.video)
        problem = media_problem(index, video_id)
        numbers = (float(row.start), float(row.end), float(row.score))
        hits.append(Hit(int(row.rank), str(row.video), video_id, *numbers, not problem, problem))
    return hits


@functools.cache
def page_template() -> tuple[Template, str]:
    """The page's template and its Content-Security-Policy: only its own inline style and script may run."""
    text = resources.files("vidclip.index").joinpath("templates/search.html").read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        body = re.search(f"<{tag}>(.*?)</{tag}>", text, re.S).group(1)
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    policy = (
        f"default-src 'none'; style-src {digest('style')}; script-src {digest('script')}; img-src 'self'; "
        "media-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    return Template(text), policy


def render_page(
    index: Any,
    query: str = "",
    k: int = DEFAULT_K,
    moments: bool = False,
    hits: list[Hit] | None = None,
    message: str = "",
) -> str:
    """The HTML page: the form, then a message or the results; every piece of user text is escaped."""
    esc = functools.partial(html.escape, quote=True)
    summary = f"{len(index.videos)} videos, {len(index)} vectors indexed."
    results = ""
    if hits is not None:
        summary = f"{len(hits)} results for \u201c{esc(query)}\u201d in {len(index.videos)} videos."
    if hits:
        cards = "\n".join(render_card(hit) for hit in hits)
        results = f'<video id="player" controls preload="none"></video>\n<ol class="results">\n{cards}\n</ol>'
    return page_template()[0].substitute(
        title=esc(f"{query} - vidclip search" if query else "vidclip search"),
        query=esc(query),
        max_chars=MAX_QUERY_CHARS,
        k=k,
        max_k=MAX_K,
        moments_checked=" checked" if moments else "",
        summary=summary,
        message=f'<p class="message" role="alert">{esc(message)}</p>' if message else "",
        results=results,
    )


def render_card(hit: Hit) -> str:
    """One result: a link playing the moment (the media fragment without JavaScript), or a missing file."""
    esc = functools.partial(html.escape, quote=True)
    if hit.known_end:
        when = f'<span class="time">{format_time(hit.start)}\u2013{format_time(hit.end)}</span> \u00b7 '
    else:  # an index built from embeddings knows where a row starts only
        when = f'<span class="time">from {format_time(hit.start)}</span> \u00b7 ' if hit.start > 0 else ""
    text = (
        f'<span class="name" title="{esc(hit.video)}">{esc(Path(hit.video).name)}</span><br>'
        f'{when}<span class="score">score {hit.score:.3f}</span>'
    )
    if not hit.available:
        return (
            f'<li class="result"><span class="missing">cannot play: {esc(hit.problem)}</span><br>{text}</li>'
        )
    return (
        f'<li class="result"><a href="{esc(hit.media_url)}" data-src="/media/{hit.video_id}" '
        f'data-start="{hit.start:.3f}"><img src="{hit.thumbnail_url}" alt="frame at {format_time(hit.middle)}" '
        f'loading="lazy">{text}</a></li>'
    )


def thumbnail_jpeg(source: Path | VideoSpan, seconds: float, height: int = THUMB_HEIGHT) -> bytes:
    """The frame of ``source`` (a file, or a sample's video in a shard) at ``seconds`` (clamped to the video),
    ``height`` pixels high, as JPEG bytes."""
    from PIL import Image

    from vidclip.video import open_video

    if isinstance(source, VideoSpan):
        if source.size > MAX_THUMB_SOURCE_BYTES:  # decoded from memory: a whole sample is read for a frame
            raise ValueError(
                f"the sample's video is {source.size / 2**20:.0f} MiB, over the "
                f"{MAX_THUMB_SOURCE_BYTES // 2**20} MiB read into memory for a thumbnail"
            )
        reader = open_video(f"{source.path}#{source.member}", data=source.read())
    else:
        reader = open_video(source)
    try:
        frame_index = min(max(int(seconds * reader.fps), 0), reader.num_frames - 1)
        frame = reader.get_frames([frame_index])[0].cpu().numpy()
    finally:
        reader.close()
    image = Image.fromarray(frame)
    width = max(1, round(image.width * height / image.height))
    out = io.BytesIO()
    image.resize((width, height), Image.Resampling.BILINEAR).save(out, format="JPEG", quality=80)
    return out.getvalue()


def create_app(index: Any, *, allowed_hosts: list[str] | None = None, thumb_cache: int = 256) -> Any:
    """The FastAPI app serving ``index``; ``allowed_hosts``: the Host headers answered (default: loopback
    names only, which defeats DNS rebinding; ``["*"]`` for any)."""
    from fastapi import FastAPI, Header
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from vidclip.video.errors import VideoDecodeError

    app = FastAPI(
        title="vidclip search", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS))
    lock = threading.Lock()
    headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def indexed_media(text: str) -> Path | VideoSpan | JSONResponse:
        """The file or shard span of the video id ``text``, or the 404 to answer: an unknown id, a file moved
        since, a sample that cannot be played from its shard."""
        if not _ID.fullmatch(text) or int(text) >= len(index.videos):
            return error(404, f"no video {text[:40]!r} in this index (ids are 0 to {len(index.videos) - 1})")
        try:
            return locate_media(index, int(text))
        except MediaUnavailable as err:
            return error(404, str(err))

    @app.get("/", response_class=HTMLResponse)
    def page(q: str | None = None, k: str | None = None, moments: str | None = None) -> HTMLResponse:
        policy = {**headers, "Content-Security-Policy": page_template()[1]}
        if q is None:
            return HTMLResponse(render_page(index), headers=policy)
        try:
            query, count, merge = parse_search(q, k, moments)
        except RequestError as err:
            text = render_page(
                index, q.strip()[:MAX_QUERY_CHARS], DEFAULT_K, parse_flag(moments), message=str(err)
            )
            return HTMLResponse(text, status_code=400, headers=policy)
        try:
            hits = run_search(index, query, count, merge, lock)
        except ValueError as err:  # the index refused (its model's weights changed...): say why
            text = render_page(index, query, count, merge, message=f"the search failed: {err}")
            return HTMLResponse(text, status_code=500, headers=policy)
        return HTMLResponse(render_page(index, query, count, merge, hits), headers=policy)

    @app.get("/api/search")
    def api_search(q: str | None = None, k: str | None = None, moments: str | None = None) -> JSONResponse:
        try:
            query, count, merge = parse_search(q, k, moments)
        except RequestError as err:
            return error(400, str(err))
        try:
            hits = run_search(index, query, count, merge, lock)
        except ValueError as err:
            return error(500, f"the search failed: {err}")
        body = {"query": query, "k": count, "moments": merge, "results": [hit.to_json() for hit in hits]}
        return JSONResponse(body, headers=headers)

    @app.get("/media/{video_id}")
    def media(video_id: str, range_header: str | None = Header(default=None, alias="range")) -> Response:
        source = indexed_media(video_id)
        if isinstance(source, VideoSpan):
            try:
                return span_response(source, range_header, headers)
            except OSError as err:  # the shard went away since it was located
                return error(
                    404, f"video {index.videos[int(video_id)]!r} cannot be read from its shard: {err}"
                )
        return source if isinstance(source, JSONResponse) else FileResponse(source, headers=headers)

    @functools.lru_cache(maxsize=thumb_cache)
    def cached_thumbnail(source: Path | VideoSpan, ms: int, mtime_ns: int) -> bytes:
        return thumbnail_jpeg(source, ms / 1000)

    @app.get("/thumb/{video_id}/{ms}.jpg")
    def thumb(video_id: str, ms: str) -> Response:
        source = indexed_media(video_id)
        if isinstance(source, JSONResponse):
            return source
        if not _ID.fullmatch(ms):
            return error(404, f"the time of a thumbnail is whole milliseconds, got {ms[:40]!r}")
        path = source.path if isinstance(source, VideoSpan) else source
        try:
            jpeg = cached_thumbnail(source, int(ms), path.stat().st_mtime_ns)
        except (OSError, VideoDecodeError, ValueError) as err:
            return error(404, f"no frame of {path.name} at {int(ms) / 1000:g} s: {err}")
        return Response(jpeg, media_type="image/jpeg", headers={**headers, "Cache-Control": "max-age=3600"})

    return app
