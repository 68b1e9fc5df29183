"""Sending a webhook: the SSRF guard (egress), the HTTP sender and Standard Webhooks signing."""
