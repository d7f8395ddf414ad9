"""ossec_dfir.collectors.triage."""
