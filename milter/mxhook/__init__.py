"""mxhook: a Postfix milter that turns a mail server into a self-hosted email-webhook service."""

__version__ = "0.1.0"
