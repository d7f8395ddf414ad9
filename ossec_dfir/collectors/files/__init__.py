"""ossec_dfir.collectors.files."""
