"""Trust: who may command this host (Ed25519-signed messages) and until when (deadlines)."""
