"""Progress events collected by a test: how launches and VM boots are counted (no globals)."""

from __future__ import annotations

from imagekit.progress import ProgressEvent


class Events:
    """A progress callback that keeps every event; ``launches`` counts appliance starts."""

    def __init__(self) -> None:
        self.seen: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.seen.append(event)

    @property
    def launches(self) -> int:
        """libguestfs appliance launches (stage ``launch``)."""
        return sum(event.stage == "launch" for event in self.seen)

    @property
    def boots(self) -> int:
        """VMs booted, such as installers (stage ``boot``)."""
        return sum(event.stage == "boot" for event in self.seen)
