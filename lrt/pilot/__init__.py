"""The pilot: claims tokens, runs their payloads, reports back (worker-node side)."""
