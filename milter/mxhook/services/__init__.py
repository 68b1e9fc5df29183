"""The operations the CLI, the HTTP API and the web console call: plain values in (a
config.Config and typed arguments), plain data out (dataclasses and dicts), refusals as
services.errors.ServiceError with a stable code. Nothing here knows a front-end.

domains, rules (inbound routes), endpoints (event endpoints), targets (what both share:
secrets, the SSRF guard, key rotation), blocks, logs (+ csvexport), replay, status, explain
(`rule test`), check and postfix (`mxhook check`, `mxhook postfix-config`); stores opens the
databases, times parses the times and durations an admin gives.
"""
