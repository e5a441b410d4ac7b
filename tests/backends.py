"""Which decoder backends the tests run: torchcodec's only where its library and FFmpeg's shared libraries load."""

import pytest

from vidclip.video import DecoderUnavailableError, check_decoder


def torchcodec_missing() -> str | None:
    """Why the torchcodec backend cannot run here, or None when it can."""
    try:
        check_decoder("torchcodec")
    except DecoderUnavailableError as err:
        return str(err)
    return None


NEEDS_TORCHCODEC = pytest.mark.skipif(
    torchcodec_missing() is not None, reason=f"torchcodec unavailable: {torchcodec_missing()}"
)


def backend_param(name: str, *values):
    """A test parameter for ``name`` (plus ``values``), skipped where that backend cannot run."""
    marks = [NEEDS_TORCHCODEC] if name == "torchcodec" else []
    return pytest.param(*values, name, marks=marks) if values else pytest.param(name, marks=marks)
