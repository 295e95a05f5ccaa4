"""A recipe's ``[test]`` and ``[check]`` tables: what a build proves of its image before tagging.

The key table (:mod:`imagekit.recipe.schema`) has checked each key; here the files they name
must exist and the seed options must not contradict each other, so a typo fails when the
recipe loads rather than after the last layer is built.
"""

from __future__ import annotations

import re
from pathlib import Path

from imagekit.core.refs import NAME_RE
from imagekit.errors import RecipeError
from imagekit.recipe.model import BootTest, CloudInit, ProfileCheck
from imagekit.recipe.table import Values


def boot_test(values: Values | None, base_dir: Path, where: str) -> BootTest | None:
    """The ``[test]`` table as a :class:`BootTest`, or None when the recipe has none."""
    if values is None:
        return None
    at = f"{where} [test]"
    cloud_init = _cloud_init(values["cloud_init"], base_dir, f"{at} cloud_init")
    seed = _file(values["seed"], base_dir, at, "seed")
    if seed is not None and cloud_init is not None:
        raise RecipeError(f"{at}: give a seed ISO or cloud_init, not both")
    if seed is not None and values["seedless"]:
        raise RecipeError(f"{at}: seedless serves the cloud_init seed over HTTP; drop seed")
    return BootTest(
        boot=values["boot"],
        marker=values["marker"],
        timeout=values["timeout"],
        inactivity=values["inactivity"],
        ssh=values["ssh"],
        ssh_user=values["ssh_user"],
        identity=_file(values["identity"], base_dir, at, "identity"),
        memory=values["memory"],
        vcpus=values["vcpus"],
        seed=seed,
        seedless=values["seedless"],
        cloud_init=cloud_init,
    )


def profile_check(values: Values | None, base_dir: Path, where: str) -> ProfileCheck | None:
    """The ``[check]`` table; the profile itself is read when the build runs the check."""
    if values is None:
        return None
    profile: str = values["profile"]
    if not (profile.endswith(".toml") or re.fullmatch(NAME_RE, profile)):
        raise RecipeError(
            f"{where} [check]: profile must be a profile name (fedora-server) or a .toml file, "
            f"not {profile!r}"
        )
    return ProfileCheck(profile, base_dir, values["required"])


def _cloud_init(values: Values | None, base_dir: Path, where: str) -> CloudInit | None:
    if values is None:
        return None
    return CloudInit(
        hostname=values["hostname"],
        user=values["user"],
        ssh_keys=tuple(_existing(key, base_dir, where, "ssh_keys") for key in values["ssh_keys"]),
        packages=values["packages"],
        runcmd=values["runcmd"],
        user_data=_file(values["user_data"], base_dir, where, "user_data"),
        network_config=_file(values["network_config"], base_dir, where, "network_config"),
    )


def _file(name: str, base_dir: Path, where: str, key: str) -> Path | None:
    return _existing(name, base_dir, where, key) if name else None


def _existing(name: str, base_dir: Path, where: str, key: str) -> Path:
    """``name`` (``~`` expanded) against the recipe's folder; it must be a file."""
    path = base_dir / Path(name).expanduser()
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        raise RecipeError(f"{where}: {key} {str(path)!r} is not a file")
    return path
