"""Collector plugins: every public module here registers one or more collectors."""
