"""``python -m mmtoxicqa.cli``: the ``mmtoxicqa`` command (what the tests and a checkout without the script call)."""

import sys

from mmtoxicqa.cli import main

sys.exit(main())
