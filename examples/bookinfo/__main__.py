"""``python -m examples.bookinfo``: start the Bookinfo demo (see launcher.py)."""

import sys

from examples.bookinfo.launcher import main

sys.exit(main())
