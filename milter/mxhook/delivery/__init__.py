"""Sending a webhook: one dispatch pipeline for inbound deliveries and event batches (pipeline),
the policy for failing targets (health), the HTTP sender (webhook), the SSRF guard (egress) and
Standard Webhooks signing (signing)."""
