"""Proof: checksum files, OpenPGP signatures by pinned keys, and the levels they reach."""
