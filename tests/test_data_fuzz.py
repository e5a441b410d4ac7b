"""Annotation readers on arbitrary file contents: they parse, or fail with an AnnotationError naming the file."""

import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidclip.config import DataConfig
from vidclip.data import AnnotationError, get_reader

# Text that looks like the formats' own syntax, so the fuzzer reaches past the first parse.
SYNTAX = st.sampled_from(
    list(',"\n\r{}[]:0123456789') + ["video_id", "sentence", "video", "caption", "label"]
)
TEXT = st.one_of(st.text(max_size=200), st.lists(SYNTAX, max_size=60).map("".join))
CONTENT = st.one_of(TEXT, st.binary(max_size=200))
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["video", "description", "videos", "sentences", "video_id", "caption", "sen_id"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def read_or_named_error(config: DataConfig, method: str, named: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            getattr(get_reader(config), method)("test")
        except (AnnotationError, FileNotFoundError) as err:
            assert named.name in str(err) or "data." in str(err), f"error does not name the file: {err}"


@FUZZ
@given(content=CONTENT)
def test_csv_reader(tmp_path, content):
    path = write(tmp_path / "test.csv", content)
    read_or_named_error(
        DataConfig(format="csv", test=str(path), video_root=str(tmp_path)), "read_retrieval", path
    )


@FUZZ
@given(content=CONTENT)
def test_msrvtt_split_csv(tmp_path, content):
    annotations = tmp_path / "MSRVTT_data.json"
    annotations.write_text(
        json.dumps({"videos": [], "sentences": [{"video_id": "video1", "caption": "a", "sen_id": 0}]})
    )
    path = write(tmp_path / "test.csv", content)
    config = DataConfig(
        format="msrvtt", test=str(path), annotations=str(annotations), video_root=str(tmp_path)
    )
    read_or_named_error(config, "read_retrieval", path)


@FUZZ
@given(content=st.one_of(CONTENT, JSONISH.map(json.dumps)))
def test_msrvtt_annotations_json(tmp_path, content):
    annotations = write(tmp_path / "MSRVTT_data.json", content)
    split = tmp_path / "test.csv"
    split.write_text("video_id\nvideo1\n")
    config = DataConfig(
        format="msrvtt", test=str(split), annotations=str(annotations), video_root=str(tmp_path)
    )
    read_or_named_error(config, "read_retrieval", annotations)


@FUZZ
@given(content=st.one_of(CONTENT, JSONISH.map(json.dumps)))
def test_didemo_json(tmp_path, content):
    path = write(tmp_path / "test_data.json", content)
    config = DataConfig(format="didemo", test=str(path), video_root=str(tmp_path))
    read_or_named_error(config, "read_retrieval", path)


@FUZZ
@given(content=CONTENT)
def test_kinetics_csv(tmp_path, content):
    path = write(tmp_path / "test.csv", content)
    config = DataConfig(format="kinetics", test=str(path), train=str(path), video_root=str(tmp_path))
    read_or_named_error(config, "read_classification", path)


@pytest.mark.parametrize(
    "content", ["", "video\n", 'video,caption\n"unterminated\n', "video,caption\na,b,c,d\n"]
)
def test_known_malformed_csvs_name_the_file(tmp_path, content):
    path = write(tmp_path / "broken.csv", content)
    with pytest.raises(AnnotationError, match="broken.csv"):
        get_reader(DataConfig(format="csv", test=str(path), video_root=str(tmp_path))).read_retrieval("test")
