"""ossec_dfir.ar."""
