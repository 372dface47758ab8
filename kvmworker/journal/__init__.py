"""The journal: what the worker received and answered, the exactly-once guard built on it, and replay."""
