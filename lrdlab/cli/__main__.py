"""``python -m lrdlab.cli`` (e.g. under ``torchrun``)."""

import sys

from lrdlab.cli import main

sys.exit(main())
