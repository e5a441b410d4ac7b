"""Generated videos for tests, benchmarks and the offline demo: apart from the library, which never imports
this package (``tests/test_layout.py`` checks it)."""

from vidclip.synthetic.videos import (
    INDEX_BITS,
    decode_all_frames,
    index_frames,
    read_frame_index,
    write_video,
)

__all__ = ["INDEX_BITS", "decode_all_frames", "index_frames", "read_frame_index", "write_video"]
