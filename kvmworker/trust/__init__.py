"""Trust: who may command this host (Ed25519-signed messages) and until when (deadlines)."""


class KeyFileError(ValueError):
    """A key file is missing, unreadable, unsafe or invalid: refuse to start (or to verify) rather than run open."""
