"""Message authentication of inbound mail: SPF, DKIM, DMARC and ARC verdicts (`verify`), or an
upstream verifier's trusted Authentication-Results (`upstream`), with every DNS lookup through
one injected resolver (`resolvers`) under a per-message time budget. docs/authentication.md."""
