"""ossec_dfir.report."""
