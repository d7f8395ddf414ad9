"""ossec_dfir.collectors.pcap."""
