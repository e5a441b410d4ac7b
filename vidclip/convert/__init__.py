"""Load the checkpoints users already have as vidclip models: one module per source format.

``vidclip.convert`` is loaded on first use (``import vidclip`` does not import it).
"""

from vidclip.convert.clip4clip import from_clip4clip
from vidclip.convert.hf_clip import from_hf_clip
from vidclip.convert.m2clip import from_m2clip
from vidclip.convert.xpool import from_xpool

__all__ = ["from_clip4clip", "from_hf_clip", "from_m2clip", "from_xpool"]
