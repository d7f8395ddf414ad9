"""ossec_dfir.cli."""
