"""The model: addresses, messages, routes and matching, heuristics, the inbound decision,
events, bounce classification. Pure: no sqlite3, Milter, requests or file I/O (tests/unit/test_layers.py)."""
