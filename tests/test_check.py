"""imagekit check: an image against a profile, read offline; and a recipe's [check] in a build.

Two Debian-like busybox guests are built in the module (a dpkg status file is what libguestfs
inspection reads for packages): one matches the profile written below, one differs in every
way a check can. Launches cost 15-40 s under TCG, so the module makes six: two scratch disks,
and four checks (a build's, the CLI's, the API's, a failing build's).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import imagekit
from imagekit.build import BuildResult
from imagekit.check import READS, bundled_profiles, load_profile, parse_profile
from imagekit.check.sshd import sshd_setting
from imagekit.cli.check import plain_report
from imagekit.errors import CheckError, RecipeError
from imagekit.store import Store
from tests.events import Events
from tests.guestimage import build_guest_tree

PROFILE = """
name = "test-edition"
description = "what the matching test guest is"

[sources.test]
title = "tests/test_check.py"
url = "https://example.org/test-edition"

[sources.memory]
title = "recalled"
url = "https://example.org/recalled"
from_memory = true

[[checks]]
id = "openssh"
read = "package"
name = "openssh-server"
expect = "installed"
source = "test"

[[checks]]
id = "no-telnetd"
read = "package"
name = "telnetd"
expect = "absent"
source = "test"

[[checks]]
id = "ssh-enabled"
read = "unit"
name = "ssh.service"
expect = "enabled"
source = "test"

[[checks]]
id = "debug-shell-disabled"
read = "unit"
name = "debug-shell.service"
expect = "disabled"
source = "test"

[[checks]]
id = "ctrl-alt-del-masked"
read = "unit"
name = "ctrl-alt-del.target"
expect = "masked"
source = "test"

[[checks]]
id = "zone"
read = "firewalld-zone"
expect = "FedoraServer"
source = "test"

[[checks]]
id = "lvm"
read = "root-on-lvm"
expect = false
source = "test"

[[checks]]
id = "root-fs"
read = "filesystem"
name = "/"
expect = "ext4"
source = "test"

[[checks]]
id = "boot-fs"
read = "filesystem"
name = "/boot"
expect = "xfs"
required = false
source = "memory"

[[checks]]
id = "selinux"
read = "selinux"
expect = "enforcing"
source = "test"

[[checks]]
id = "root-login"
read = "sshd"
name = "PermitRootLogin"
expect = "no"
source = "test"

[[checks]]
id = "password-auth"
read = "sshd"
name = "PasswordAuthentication"
expect = "yes"
source = "test"

[[checks]]
id = "cloud-init"
read = "cloud-init"
expect = true
source = "test"
"""
MATCHING = dict.fromkeys(
    [
        "openssh",
        "no-telnetd",
        "ssh-enabled",
        "debug-shell-disabled",
        "ctrl-alt-del-masked",
        "zone",
        "lvm",
        "root-fs",
        "selinux",
        "root-login",
        "password-auth",
        "cloud-init",
    ],
    "pass",
) | {"boot-fs": "missing"}
DIFFERING = {
    "openssh": "differ",
    "no-telnetd": "differ",
    "ssh-enabled": "differ",
    "debug-shell-disabled": "differ",
    "ctrl-alt-del-masked": "missing",
    "zone": "missing",
    "lvm": "pass",
    "root-fs": "differ",
    "boot-fs": "missing",
    "selinux": "differ",
    "root-login": "differ",
    "password-auth": "differ",
    "cloud-init": "differ",
}
UNITS = "usr/lib/systemd/system"


def _package(name: str, status: str = "install ok installed") -> str:
    return f"Package: {name}\nStatus: {status}\nArchitecture: amd64\nVersion: 1.0-1\n"


def debian_tree(dest: Path, *, matching: bool) -> None:
    """The busybox guest as Debian, set up as the profile says, or otherwise in every check."""
    build_guest_tree(dest)
    files = {
        "etc/os-release": 'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n',
        "etc/debian_version": "12.5\n",
        f"{UNITS}/ssh.service": "[Unit]\n",
        f"{UNITS}/debug-shell.service": "[Unit]\n",
    }
    links = {}
    if matching:
        packages = [_package("openssh-server"), _package("cloud-init")]
        packages.append(_package("telnetd", "deinstall ok config-files"))
        files["etc/firewalld/firewalld-server.conf"] = "# zone\nDefaultZone=FedoraServer\n"
        files["etc/ssh/sshd_config"] = (
            "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n"
        )
        files["etc/ssh/sshd_config.d/50-test.conf"] = "PermitRootLogin no\n"
        links["etc/firewalld/firewalld.conf"] = "/etc/firewalld/firewalld-server.conf"
        links["etc/systemd/system/multi-user.target.wants/ssh.service"] = f"/{UNITS}/ssh.service"
        links["etc/systemd/system/ctrl-alt-del.target"] = "/dev/null"
    else:
        packages = [_package("busybox"), _package("telnetd")]
        files["etc/selinux/config"] = "SELINUX=permissive\nSELINUXTYPE=targeted\n"
        files["etc/ssh/sshd_config"] = "PermitRootLogin yes\nPasswordAuthentication no\n"
        files["etc/fstab"] = "LABEL=root / ext3 defaults 0 1\n"
        links["etc/systemd/system/getty.target.wants/debug-shell.service"] = (
            f"/{UNITS}/debug-shell.service"
        )
    files["var/lib/dpkg/status"] = "\n".join(packages) + "\n"  # dpkg ends each stanza so
    for name, text in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)
    for name, target in links.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).symlink_to(target)


def write_recipe(directory: Path, name: str, tree: str, extra: str = "") -> Path:
    filesystem = "ext4" if tree == "matching" else "ext3"
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nversion = "1"\n[source]\nkind = "scratch"\ncontent = "{tree}"\n'
        f'size = "256M"\nfilesystem = "{filesystem}"\n{extra}'
    )
    return path


def imagekit_cli(*args: str, store: Store) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "imagekit", command, "--store", str(store.root), *rest],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class Guests:
    store: Store
    directory: Path
    profile: Path
    matching: BuildResult
    matching_launches: int
    matching_recipe: Path
    differing: BuildResult


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Guests:
    """The matching guest built with [check] (2 launches), the differing one without (1)."""
    directory = tmp_path_factory.mktemp("check")
    debian_tree(directory / "matching", matching=True)
    debian_tree(directory / "differing", matching=False)
    profile = directory / "profile.toml"
    profile.write_text(PROFILE)
    store = Store(directory / "store")
    matching_recipe = write_recipe(
        directory, "resembling", "matching", '[check]\nprofile = "profile.toml"\n'
    )
    events = Events()
    matching = store.build(imagekit.load_recipe(matching_recipe), progress=events)
    differing = store.build(imagekit.load_recipe(write_recipe(directory, "differing", "differing")))
    return Guests(store, directory, profile, matching, events.launches, matching_recipe, differing)


def statuses(checks: list[dict[str, object]]) -> dict[object, object]:
    return {check["id"]: check["status"] for check in checks}


@pytest.mark.guestfs
def test_a_build_records_its_check_and_a_rebuild_checks_nothing(guests: Guests) -> None:
    assert guests.matching_launches == 2  # the scratch disk, then one read-only check
    record = guests.matching.image.provenance["check"]
    assert statuses(record["checks"]) == MATCHING
    assert record["passed"] is True and record["required"] is True
    assert record["disk"] == guests.matching.image.disk_digest
    assert record["profile"]["name"] == "test-edition"
    assert record["os"]["distro"] == "debian" and record["os"]["package_format"] == "deb"
    by_id = {check["id"]: check for check in record["checks"]}
    assert by_id["root-login"]["found"] == "no"
    assert by_id["root-login"]["detail"] == "in /etc/ssh/sshd_config.d/50-test.conf"
    assert by_id["password-auth"]["detail"] == "OpenSSH's default"
    assert by_id["zone"]["detail"] == "DefaultZone in /etc/firewalld/firewalld.conf"
    assert by_id["openssh"]["detail"] == "openssh-server 1.0-1"

    events = Events()
    again = guests.store.build(imagekit.load_recipe(guests.matching_recipe), progress=events)
    assert events.launches == 0 and events.boots == 0
    assert again.image.digest == guests.matching.image.digest


@pytest.mark.guestfs
def test_cli_check_json_exits_0_when_every_required_check_passes(guests: Guests) -> None:
    done = imagekit_cli(
        "check", "resembling:1", "--profile", str(guests.profile), "--json", store=guests.store
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] is True and report["ref"] == "resembling:1"
    assert report["counts"] == {"pass": 12, "differ": 0, "missing": 1}
    assert statuses(report["checks"]) == MATCHING
    for check in report["checks"]:
        assert {"id", "status", "expected", "found", "required", "source"} <= set(check)
        assert check["source"]["url"].startswith("https://example.org/")
    boot_fs = next(check for check in report["checks"] if check["id"] == "boot-fs")
    assert boot_fs["required"] is False and boot_fs["source"]["from_memory"] is True
    assert boot_fs["expected"] == "xfs" and boot_fs["found"] is None


@pytest.mark.guestfs
def test_a_differing_image_differs_check_by_check(guests: Guests) -> None:
    events = Events()
    report = guests.store.check("differing:1", str(guests.profile), progress=events)
    assert events.launches == 1
    assert {r.check.id: r.status for r in report.results} == DIFFERING
    assert report.passed is False
    found = {r.check.id: r.found for r in report.results}
    assert found["openssh"] == "absent" and found["no-telnetd"] == "installed"
    assert found["ssh-enabled"] == "disabled" and found["debug-shell-disabled"] == "enabled"
    assert found["root-fs"] == "ext3" and found["selinux"] == "permissive"
    assert found["root-login"] == "yes" and found["password-auth"] == "no"
    assert found["cloud-init"] is False and found["zone"] is None
    text = plain_report(report)  # what `imagekit check` prints in a pipe
    lines = text.splitlines()
    assert lines[1].split() == ["STATUS", "ID", "REQUIRED", "EXPECTED", "FOUND", "SOURCE"]
    by_id = {line.split()[1]: line.split() for line in lines[2:15]}
    assert by_id["openssh"][:3] == ["differ", "openssh", "required"]
    assert by_id["zone"] == ["missing", "zone", "required", "FedoraServer", "-", "test"]
    assert by_id["boot-fs"][2] == "advisory"
    assert "memory: recalled <https://example.org/recalled> (cited from memory)" in lines
    assert lines[-1].startswith("test-edition: 1 pass, 9 differ, 3 missing; required failed: ")


@pytest.mark.guestfs
def test_a_failed_required_check_fails_the_build_with_exit_9(guests: Guests) -> None:
    recipe = write_recipe(
        guests.directory, "differing-checked", "differing", '[check]\nprofile = "profile.toml"\n'
    )
    done = imagekit_cli("build", str(recipe), store=guests.store)
    assert done.returncode == 9
    assert done.stderr.startswith("imagekit: error: differing-checked:1 [check]: ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "openssh: expected 'installed', differ ('absent')" in done.stderr
    assert imagekit_cli("inspect", "differing-checked:1", store=guests.store).returncode == 6


# --- no launch ------------------------------------------------------------------------------


def test_the_bundled_profiles_load_and_cite_a_source_for_every_check() -> None:
    profiles = bundled_profiles()
    assert {"fedora-server", "fedora-cloud", "debian-cloud"} <= set(profiles)
    for name in profiles:
        profile = load_profile(name)
        assert profile.name == name and profile.description
        assert profile.checks and any(check.required for check in profile.checks)
        for check in profile.checks:
            assert check.read in READS
            assert check.source.title and check.source.url, check.id
    server = {check.id: check for check in load_profile("fedora-server").checks}
    assert server["firewalld-zone"].expect == "FedoraServer"
    assert server["root-on-lvm"].expect is True and server["root-xfs"].expect == "xfs"
    assert server["cockpit-enabled"].source.url == "recipes/kickstart/fedora-server.ks"


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ('expect = "installed"', 'expect = "present"', "expect must be installed or absent"),
        ("expect = false", 'expect = "no"', "expect must be true or false"),
        ('name = "openssh-server"\n', "", "needs name = the package"),
        ('source = "memory"', 'source = "nowhere"', "source 'nowhere' is not one of"),
        ('id = "zone"', 'id = "lvm"', "check id(s) lvm used more than once"),
        ('read = "selinux"', 'read = "apparmor"', "unknown read 'apparmor'"),
        ("required = false", "requird = false", "unknown key(s) requird"),
    ],
)
def test_a_profile_is_read_strictly(old: str, new: str, error: str) -> None:
    assert old in PROFILE
    parse_profile(PROFILE.encode())
    with pytest.raises(RecipeError, match=re.escape(error)):
        parse_profile(PROFILE.replace(old, new, 1).encode())


def test_an_unknown_profile_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="known profiles: debian-cloud, fedora-cloud"):
        load_profile("fedora-workstation")
    local = tmp_path / "mine.toml"
    shutil.copy(bundled_profiles()["debian-cloud"], local)
    assert load_profile("mine.toml", base_dir=tmp_path).name == "debian-cloud"


def test_sshd_reads_the_first_value_through_includes_and_stops_at_match() -> None:
    files = {
        "/etc/ssh/sshd_config": "# PermitRootLogin yes\nInclude sshd_config.d/*.conf\n"
        "PasswordAuthentication=yes\nMatch User alice\n  X11Forwarding yes\n",
        "/etc/ssh/sshd_config.d/10-a.conf": 'permitrootlogin  "no"\n',
        "/etc/ssh/sshd_config.d/90-b.conf": "PermitRootLogin yes\nPasswordAuthentication no\n",
    }

    def expand(pattern: str) -> list[str]:
        assert pattern == "/etc/ssh/sshd_config.d/*.conf"
        return ["/etc/ssh/sshd_config.d/90-b.conf", "/etc/ssh/sshd_config.d/10-a.conf"]

    def setting(keyword: str) -> tuple[str | None, str] | None:
        found = sshd_setting(keyword, files.get, expand)
        return None if found is None else (found.value, found.origin)

    assert setting("PermitRootLogin") == ("no", "/etc/ssh/sshd_config.d/10-a.conf")
    assert setting("PasswordAuthentication") == ("no", "/etc/ssh/sshd_config.d/90-b.conf")
    assert setting("X11Forwarding") == ("no", "default")  # set only inside a Match block
    assert setting("Banner") == (None, "unset")
    assert sshd_setting("PermitRootLogin", {}.get, expand) is None


def test_check_error_has_its_own_exit_code() -> None:
    assert CheckError.exit_code == 9 and imagekit.CheckError is CheckError
    codes = [cls.exit_code for cls in imagekit.ImagekitError.__subclasses__()]
    assert codes.count(9) == 1
