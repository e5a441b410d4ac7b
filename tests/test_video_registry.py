"""The decoder registry: a backend registered anywhere is usable by name, ``auto`` follows the declared
preference among those that run here, and the renamed ``VideoClip`` / ``load_clip`` still work, warning."""

import warnings

import numpy as np
import pytest

import vidclip.video
from vidclip.synthetic import read_frame_index
from vidclip.video import (
    DECODERS,
    DecoderUnavailableError,
    SampledFrames,
    UnknownDecoderError,
    check_decoder,
    get_decoder,
    load_frames,
    register_decoder,
)
from vidclip.video.decoders import base
from vidclip.video.decoders.pyav import PyAVReader


@pytest.fixture
def registry():
    """The registry as it was, restored after the test: decoders registered in a test do not leak."""
    saved = dict(DECODERS), dict(base._AUTO_PREFERENCE)
    yield DECODERS
    DECODERS.clear()
    DECODERS.update(saved[0])
    base._AUTO_PREFERENCE.clear()
    base._AUTO_PREFERENCE.update(saved[1])


class Mine:
    """A decoder as a user would add one: its own class (PyAV underneath here), recording what it is asked."""

    asked: list[list[int]] = []

    def __init__(self, path: str):
        self._inner = PyAVReader(path)
        self.path, self.num_frames, self.fps = path, self._inner.num_frames, self._inner.fps

    def get_frames(self, indices):
        Mine.asked.append(list(indices))
        return self._inner.get_frames(indices)

    def close(self):
        self._inner.close()


def test_a_decoder_registered_in_a_test_module_is_listed_and_decodes(registry, index_video):
    Mine.asked = []
    register_decoder("mine")(Mine)
    assert "mine" in DECODERS and "mine" in vidclip.video.list_decoders() and get_decoder("mine") is Mine
    check_decoder("mine")
    sampled = load_frames(index_video(20), 4, decoder="mine")
    assert Mine.asked == [sampled.indices.tolist()]
    assert [read_frame_index(f) for f in sampled.frames.numpy()] == sampled.indices.tolist()
    frames = vidclip.video.load_video(index_video(20), 4, decoder="mine")
    assert np.array_equal(frames.numpy(), sampled.frames.numpy())


def test_auto_is_the_preferred_decoder_that_runs_here(registry, index_video):
    assert get_decoder("auto") is DECODERS["pyav"]  # PyAV everywhere, for now

    class Unrunnable(Mine):
        @staticmethod
        def check_available():
            raise DecoderUnavailableError("needs hardware this machine lacks")

    register_decoder("unrunnable", auto_preference=20)(Unrunnable)
    assert get_decoder("auto") is DECODERS["pyav"]  # preferred, but it cannot run here
    register_decoder("mine", auto_preference=10)(Mine)
    assert get_decoder("auto") is Mine
    Mine.asked = []
    load_frames(index_video(12), 3)
    assert len(Mine.asked) == 1
    register_decoder("mine")(Mine)  # registered again without a preference: by name only
    assert get_decoder("auto") is DECODERS["pyav"]


def test_registering_a_name_twice_warns_and_auto_is_not_a_name(registry):
    register_decoder("mine")(Mine)
    with pytest.warns(UserWarning, match="'mine' is registered twice"):
        register_decoder("mine")(type("Other", (Mine,), {}))
    with pytest.raises(ValueError, match="automatic choice"):
        register_decoder("auto")


def test_unknown_decoders_are_a_value_error_listing_the_registered_ones():
    with pytest.raises(
        UnknownDecoderError, match=r"unknown decoder .*registered decoders: .*pyav.* \(or 'auto'\)"
    ):
        check_decoder("pyav2")
    assert issubclass(UnknownDecoderError, ValueError)
    assert not vidclip.video.decodes_on_device("pyav2")


def test_videoclip_and_load_clip_are_deprecated_aliases(index_video):
    path = index_video(10)
    with pytest.warns(DeprecationWarning, match="renamed SampledFrames") as record:
        from vidclip.video import VideoClip
    assert VideoClip is SampledFrames and record[0].filename == __file__
    with pytest.warns(DeprecationWarning, match="renamed load_frames") as record:
        old = vidclip.video.load_clip(path, 4)
    assert record[0].filename == __file__  # points at the caller, to find it
    assert isinstance(old, SampledFrames) and old.indices.tolist() == load_frames(path, 4).indices.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_frames(path, 4), vidclip.video.load_video(path, 4)  # the new names do not warn
    with pytest.raises(AttributeError, match="no attribute 'VideoClips'"):
        vidclip.video.VideoClips  # noqa: B018
