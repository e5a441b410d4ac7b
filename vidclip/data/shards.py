"""WebDataset shards as a source of videos: naming them, learning their samples, and reading them in order.

A shard is a tar file of samples, each a few members sharing a key: the video (``{key}.mp4``, or another
container's extension) and its metadata (``{key}.json``: ``captions`` or ``caption``, ``label``, ``video``,
``id``...; a WebDataset ``{key}.txt`` caption and ``{key}.cls`` label are read too). Shards are named by
local paths with brace patterns (``shards/train-{000000..000099}.tar``) or globs (``shards/train-*.tar``),
several joined by ``::``, by ``pipe:`` commands (``pipe:aws s3 cp s3://bucket/train-000000.tar -``) and by
fsspec URLs (``s3://bucket/train-000000.tar``, ``memory://...``), read through the ``webdataset`` library's
tar iterator.

The samples of a shard set are learnt before anything is decoded: from the index ``vidclip prepare --shards``
writes beside the shards (``{split}-samples.parquet``), else by listing the shards once (a read of each, no
decoding). Each sample is then named by a reference ``{shard URL}#{key}``, which travels through the commands
like a file path (rows, errors, the failure list), and a truncated shard's lost samples are named one by one.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("vidclip.data")

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
INDEX_SUFFIX = "-samples.parquet"
INDEX_METADATA_KEY = b"vidclip.shards"
VIDEO_MEMBERS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "ts", "flv", "ogv", "3gp", "wmv")
SKIPPED_MEMBERS = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta, given to its tar iterator
_NUMBERED = re.compile(r"^(?P<prefix>.+)-\d+(\.tar|\.tar\.gz|\.tgz)$")


class ShardError(ValueError):
    """Shards that cannot be used at all (none named, an index that is not one); names the URL and why."""


def is_shard_spec(text: str) -> bool:
    """Whether an input names shards (``pipe:``, a tar URL or brace pattern, ``::`` lists, or a shard index)
    rather than video files."""
    text = os.fspath(text)
    if text.startswith("pipe:"):
        return True
    parts = text.split("::")
    return all(part.endswith(SHARD_SUFFIXES) or part.endswith(INDEX_SUFFIX) for part in parts if part)


def expand_shard_urls(spec: str | Sequence[str]) -> list[str]:
    """The shard URLs ``spec`` names, in order: brace patterns expanded, ``::`` lists split (webdataset's
    own rules), a list taken as given."""
    from webdataset.shardlists import expand_urls

    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls: list[str] = []
    for one in specs:
        for url in expand_urls(os.fspath(one)):
            urls += _glob(url)
    if not urls:
        raise ShardError(f"{spec}: names no shards")
    return urls


def _glob(url: str) -> list[str]:
    """A local path with ``*``, ``?`` or ``[...]``: the files it matches, sorted (at least one); else the URL."""
    if is_remote(url) or not glob.has_magic(url):
        return [url]
    found = sorted(glob.glob(url.removeprefix("file://")))
    if not found:
        raise ShardError(f"{url}: matches no file")
    return found


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url and not url.startswith("file://")


def open_shard(url: str):
    """A readable binary stream of the shard at ``url``: a local file, a ``pipe:`` command's output (webdataset's
    gopen), or an fsspec URL. Raises FileNotFoundError/OSError naming the URL when it cannot be opened."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    if "://" in url and not url.startswith("file://"):
        try:
            import fsspec
        except ImportError:
            raise ShardError(f"{url}: reading this URL needs fsspec (pip install fsspec)") from None
        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


def video_member(extensions: Iterable[str]) -> str | None:
    """Which of a sample's member extensions is its video: the first of VIDEO_MEMBERS it has, or None."""
    present = set(extensions)
    return next((ext for ext in VIDEO_MEMBERS if ext in present), None)


@dataclass
class RawSample:
    """One sample as the tar holds it: its key and its members' bytes by extension (``mp4``, ``json``...)."""

    key: str
    members: dict[str, bytes]

    def video(self) -> tuple[str, bytes] | None:
        """(extension, bytes) of the video member, or None when the sample has none."""
        ext = video_member(self.members)
        return None if ext is None else (ext, self.members[ext])

    def metadata(self) -> dict[str, Any]:
        """The sample's JSON (``{}`` without one), with a ``.txt`` caption and a ``.cls`` label folded in."""
        meta: dict[str, Any] = {}
        if "json" in self.members:
            meta = json.loads(self.members["json"].decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("its .json is not an object")
        if "txt" in self.members and "captions" not in meta and "caption" not in meta:
            meta["caption"] = self.members["txt"].decode("utf-8").strip()
        if "cls" in self.members and "label" not in meta:
            meta["label"] = int(self.members["cls"].decode("utf-8").strip())
        return meta


def iter_shard(url: str, wanted: Callable[[str], bool] | None = None) -> Iterator[RawSample]:
    """The samples of one shard in the order stored (members of a key are consecutive), read by webdataset's
    streaming tar iterator. ``wanted(key)`` False: the sample's members are passed over, not read into memory.
    A shard that cannot be opened or read to its end raises :class:`ShardReadError` after the samples read
    before the fault."""
    from webdataset.tariterators import tar_file_iterator

    try:
        stream = open_shard(url)
    except ShardError:
        raise
    except Exception as err:
        raise ShardReadError(url, _reason(err)) from err

    seen = [None]  # the key of the last member header read, wanted or not

    def selected(name: str) -> bool:
        key, ext = split_member(name)
        seen[0] = key
        return key is not None and ext is not None and (wanted is None or wanted(key))

    current: RawSample | None = None
    done: str | None = None  # the key of the last sample given out whole
    fault: Exception | None = None
    try:
        with stream:
            for member in tar_file_iterator(stream, skip_meta=SKIPPED_MEMBERS.pattern, select_files=selected):
                key, ext = split_member(member["fname"])
                if current is not None and key != current.key:
                    done = current.key
                    yield current
                    current = None
                if current is None:
                    current = RawSample(key, {})
                current.members[ext] = member["data"]
    except ShardReadError:
        raise
    except Exception as err:  # a truncated or corrupt tar, a pipe that failed, a connection that dropped
        fault = err
    if fault is None:
        if current is not None:
            yield current
        return
    if current is not None and seen[0] != current.key:  # the fault came in a later sample: this one is whole
        done = current.key
        yield current
    raise ShardReadError(url, _reason(fault), after=done) from fault


def is_skipped(name: str) -> bool:
    """Whether webdataset's tar iterator passes over a member of this name: its ``__...__`` metadata (a
    ``__name__`` member, or anything under a ``__folder__/``)."""
    top_level_meta = "/" not in name and name.startswith("__") and name.endswith("__")
    return top_level_meta or SKIPPED_MEMBERS.match(name) is not None


def split_member(name: str) -> tuple[str | None, str | None]:
    """(key, lower-case extension) of a tar member's name, as webdataset groups members into samples: the key is
    the path up to the first dot of the base name; (None, None) for a name without an extension."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return (key, ext.lower()) if key is not None and ext else (None, None)


def _reason(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such shard"
    text = " ".join(str(err).split(" @ <")[0].split())[:200]  # webdataset appends " @ <the stream>"
    if isinstance(err, tarfile.ReadError) or "unexpected end" in text.lower():
        return f"truncated or corrupt tar ({text})"
    return f"{type(err).__name__}: {text}"


class ShardReadError(OSError):
    """A shard that could not be read to its end: ``url``, ``reason``, and ``after`` (the key of the last
    sample read whole, None when none was)."""

    def __init__(self, url: str, reason: str, after: str | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.after = url, reason, after


def iter_wanted(
    shards: Sequence[tuple[str, Sequence[tuple[int, str]]]],
) -> Iterator[tuple[int, RawSample | None, str | None]]:
    """Each wanted sample of these shards once, shard by shard: ``(position, sample, None)``, or
    ``(position, None, reason)`` for one its shard lost (truncated, missing: "lost: URL: reason") or lacks.
    ``shards``: (url, [(position, key), ...]) in the order to read them."""
    for url, samples in shards:
        position_of = {key: position for position, key in samples}
        seen: set[str] = set()
        lost = None
        try:
            for raw in iter_shard(url, wanted=position_of.__contains__):
                if raw.key not in seen:
                    seen.add(raw.key)
                    yield position_of[raw.key], raw, None
        except ShardReadError as err:
            lost = f"lost: {err.url}: {err.reason}"
        for position, key in samples:
            if key not in seen:
                yield (
                    position,
                    None,
                    lost or f"not in its shard {url} (the shard changed since it was listed?)",
                )


def owned_by_process(videos: Sequence[str], rank: int, world: int) -> list[tuple[int, str]]:
    """The (position, video) pairs process ``rank`` of ``world`` takes: for shard samples (``url#key``), every
    sample of the shards ``rank::world`` (each process reads only its own shards); for files, the positions
    ``rank`` mod ``world``."""
    if world == 1:
        return list(enumerate(videos))
    urls = []
    for video in videos:
        part = split_ref(video)
        if part is None:  # files (or a mix): by position
            return [(i, v) for i, v in enumerate(videos) if i % world == rank]
        urls.append(part[0])
    shard_number = {url: number for number, url in enumerate(dict.fromkeys(urls))}
    return [
        (i, v)
        for i, (v, url) in enumerate(zip(videos, urls, strict=True))
        if shard_number[url] % world == rank
    ]


# -- what a shard set holds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleInfo:
    """One sample of a shard set: where it is, and its metadata (captions, label, video, id...)."""

    url: str
    key: str
    meta: dict[str, Any]

    @property
    def ref(self) -> str:
        return sample_ref(self.url, self.key)


@dataclass
class ShardSet:
    """The shards a spec names and their samples (in shard order, then stored order), with the index's
    metadata (task, class_names...; empty when the shards were listed instead)."""

    urls: list[str]
    samples: list[SampleInfo]
    metadata: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # shards or samples left out, with the reason

    def refs(self) -> list[str]:
        return [sample.ref for sample in self.samples]


def sample_ref(url: str, key: str) -> str:
    """How a shard's sample is named everywhere a video path would be: ``{url}#{key}``."""
    return f"{url}#{key}"


def split_ref(ref: str) -> tuple[str, str] | None:
    """(url, key) of a sample reference, or None when ``ref`` is not one (a file path)."""
    url, sep, key = os.fspath(ref).rpartition("#")
    if not sep or not key or not is_shard_spec(url):
        return None
    return url, key


def group_refs(refs: Sequence[str]) -> list[tuple[str, list[tuple[int, str]]]]:
    """Sample references (``url#key``) grouped by shard in first-seen order: (url, [(position, key), ...]),
    position = the place in ``refs``; what :func:`iter_wanted` reads. Refuses a path that is not a reference."""
    shards: dict[str, list[tuple[int, str]]] = {}
    for position, ref in enumerate(refs):
        parts = split_ref(ref)
        if parts is None:
            raise ValueError(f"not a shard sample reference (url#key): {ref}")
        shards.setdefault(parts[0], []).append((position, parts[1]))
    return list(shards.items())


def iter_videos(refs: Sequence[str]) -> Iterator[tuple[int, bytes | str]]:
    """(position, video bytes) of each sample reference, shard by shard in first-seen order, each shard read
    once; for a sample that cannot be read, (position, the reason)."""
    for position, raw, reason in iter_wanted(group_refs(refs)):
        video = raw.video() if raw is not None else None
        yield position, video[1] if video is not None else reason or "the sample has no video member"


def read_shard_set(spec: str | Sequence[str], where: str = "shards") -> ShardSet:
    """The samples of the shards ``spec`` names: from the index beside them when there is one, else by
    listing them once. A shard that cannot be read costs its own samples (named in ``problems`` and a
    warning); a sample without a video member costs itself."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if len(specs) == 1 and os.fspath(specs[0]).endswith(INDEX_SUFFIX):
        return _from_index(os.fspath(specs[0]), None, where)
    try:
        urls = expand_shard_urls(specs)
    except ShardError as err:
        raise ShardError(f"{where}: {err}") from None
    parts = []  # runs of shards that share an index (several prepared sets joined by '::'), in order
    for candidate, run in itertools.groupby(urls, key=index_name):
        run = list(run)
        index = candidate if candidate is not None and _reachable(candidate) else None
        parts.append(_from_index(index, run, where) if index is not None else _listed(run, where))
    return parts[0] if len(parts) == 1 else _joined(parts, where)


def index_name(url: str) -> str | None:
    """Where ``vidclip prepare --shards`` puts the index of a numbered shard: ``DIR/{split}-samples.parquet``
    for ``DIR/{split}-000000.tar``; None for other names and pipes."""
    if url.startswith("pipe:"):
        return None
    directory, base = posixpath.split(url)
    match = _NUMBERED.match(base)
    return None if match is None else posixpath.join(directory, match["prefix"] + INDEX_SUFFIX)


def _reachable(url: str) -> bool:
    try:
        with open_shard(url):
            return True
    except Exception:
        return False


def _joined(parts: list[ShardSet], where: str) -> ShardSet:
    """Shard sets read together: their shards and samples in order; their class names must agree."""
    names = {
        json.dumps(part.metadata.get("class_names")) for part in parts if part.metadata.get("class_names")
    }
    if len(names) > 1:
        raise ShardError(
            f"{where}: the shard sets joined name different class names: {', '.join(sorted(names))}"
        )
    metadata = next((part.metadata for part in parts if part.metadata), {})
    return ShardSet(
        [url for part in parts for url in part.urls],
        [sample for part in parts for sample in part.samples],
        dict(metadata),
        [problem for part in parts for problem in part.problems],
    )


def _from_index(index: str, urls: list[str] | None, where: str) -> ShardSet:
    import pyarrow.parquet as pq

    try:
        with open_shard(index) as f:
            table = pq.read_table(io.BytesIO(f.read()))
    except FileNotFoundError:
        raise ShardError(f"{where}: no such shard index: {index}") from None
    except Exception as err:
        raise ShardError(f"{where}: {index} is not a shard index ({_reason(err)})") from None
    raw = (table.schema.metadata or {}).get(INDEX_METADATA_KEY)
    if raw is None:
        raise ShardError(
            f"{where}: {index} is not a vidclip shard index (no {INDEX_METADATA_KEY.decode()} metadata)"
        )
    metadata = json.loads(raw)
    directory = posixpath.dirname(index)
    if urls is None:
        urls = [posixpath.join(directory, shard["name"]) for shard in metadata.get("shards", [])]
    by_name: dict[str, list[SampleInfo]] = {posixpath.basename(url): [] for url in urls}
    url_of = {posixpath.basename(url): url for url in urls}
    for row in table.to_pylist():
        if row.get("error") is not None or row.get("shard") not in by_name:
            continue
        meta = {k: v for k, v in row.items() if v is not None and k not in ("shard", "member", "error")}
        by_name[row["shard"]].append(SampleInfo(url_of[row["shard"]], row["key"], meta))
    unknown = [url for url in urls if posixpath.basename(url) not in {s["name"] for s in metadata["shards"]}]
    if unknown:
        raise ShardError(f"{where}: {unknown[0]} is not among the shards its index {index} lists")
    samples = [sample for url in urls for sample in by_name[posixpath.basename(url)]]
    return ShardSet(urls, samples, metadata)


def _listed(urls: list[str], where: str) -> ShardSet:
    """Learn the samples by reading every shard once (their JSON parsed, nothing decoded)."""
    logger.warning(
        f"{where}: no index beside the shards ({INDEX_SUFFIX}): reading each of the {len(urls)} shards once "
        "to list its samples (vidclip prepare --shards writes the index)"
    )
    samples, problems = [], []
    for url in urls:
        try:
            for raw in iter_shard(url):
                info, problem = _describe(url, raw)
                if info is not None:
                    samples.append(info)
                if problem:
                    problems.append(problem)
        except ShardReadError as err:
            lost = f"the samples after {err.after} are left out" if err.after else "its samples are left out"
            problems.append(f"{url}: {err.reason}; {lost}")
    _warn(where, problems)
    return ShardSet(urls, samples, {}, problems)


def _describe(url: str, raw: RawSample) -> tuple[SampleInfo | None, str | None]:
    ref = sample_ref(url, raw.key)
    if raw.video() is None:
        return None, f"{ref}: the sample has no video ({', '.join(sorted(raw.members))} only)"
    try:
        meta = raw.metadata()
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{ref}: unreadable metadata ({err})"
    return SampleInfo(url, raw.key, meta), None


def _warn(where: str, problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        logger.warning(f"{where}: {len(problems)} shards or samples left out: {shown}")


def captions_of(meta: dict[str, Any]) -> list[str]:
    """A sample's captions: its JSON's ``captions`` list, or its one ``caption`` (or ``.txt``); [] when none."""
    value = meta.get("captions", meta.get("caption"))
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    return [str(text) for text in value if str(text).strip()]
