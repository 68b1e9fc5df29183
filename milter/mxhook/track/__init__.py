"""mxhook-track's web application: the public tracking endpoint (open pixels, clicked links,
one-click unsubscribe), a WSGI app of its own, apart from the admin API (it faces the internet).
Served by daemons/track.py; docs/tracking-endpoint.md."""
