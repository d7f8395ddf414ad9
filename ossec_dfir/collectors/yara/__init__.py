"""ossec_dfir.collectors.yara."""
