"""The operations, one module per subject; each module's ``OPERATIONS`` are its table rows."""
