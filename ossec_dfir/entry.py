"""Keep AR executables installed before the per-concern layout running.

``ossec-dfir install`` used to write scripts that run
``from ossec_dfir.entry import main``; it now writes ``ossec_dfir.ar.entry``.
"""
from __future__ import annotations

from .ar.entry import main

__all__ = ["main"]
