"""Disk images as bytes: what format a file is, whether it is safe to open, and qemu-img."""
