"""Shipping evidence off the host: targets, outbox, S3, SFTP, age, receipts, fetch."""
