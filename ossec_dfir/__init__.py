"""ossec-dfir: OSSEC/Wazuh active responses that collect forensic evidence."""
__version__ = "0.1.0"
