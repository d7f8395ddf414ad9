"""ossec_dfir.ossec."""
