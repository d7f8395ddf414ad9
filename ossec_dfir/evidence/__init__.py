"""ossec_dfir.evidence."""
