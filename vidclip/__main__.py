"""``python -m vidclip`` (and ``accelerate launch -m vidclip``) runs the vidclip command line."""

import sys

from vidclip.cli import main

sys.exit(main())
