"""Does an image resemble its edition? Profiles as data, read offline through libguestfs."""

from imagekit.check.profile import (
    READS,
    Check,
    Profile,
    Source,
    bundled_profiles,
    load_profile,
    parse_profile,
)
from imagekit.check.report import DIFFER, MISSING, PASS, CheckReport, CheckResult
from imagekit.check.run import check_image

__all__ = [
    "DIFFER",
    "MISSING",
    "PASS",
    "READS",
    "Check",
    "CheckReport",
    "CheckResult",
    "Profile",
    "Source",
    "bundled_profiles",
    "check_image",
    "load_profile",
    "parse_profile",
]
