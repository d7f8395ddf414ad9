"""ossec_dfir.collectors.memory."""
