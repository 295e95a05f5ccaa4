"""Kickstart builds: the distribution's installer, unattended, in a throwaway VM."""
