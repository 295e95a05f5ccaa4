"""Ideas every stage shares, written once: digests, atomic writes, locks, names."""
