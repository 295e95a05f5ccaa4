"""The network: one HTTP transport, resumable downloads, and the upstream-metadata cache."""
