"""``python -m ossec_dfir``: the ossec-dfir command."""
from __future__ import annotations

import sys

from .cli.main import main

sys.exit(main())
