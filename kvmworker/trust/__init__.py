"""Trust: who may command this host (HMAC-signed messages) and until when (deadlines)."""
