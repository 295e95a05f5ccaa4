"""Customization: the operations table offline, then every operation in one real launch.

The guestfs part costs three launches in all (scratch base, customize, read back), because
under TCG each one takes 15-30 s: the step that applies every operation also grows the disk,
as a real build step with ``size`` does, and one read-only launch collects every fact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagekit import customize
from imagekit.customize import (
    OPERATIONS,
    StepResult,
    apply_step,
    canonical_step,
    grow_size,
    manifest_step,
    needs_network,
    parse_step,
)
from imagekit.customize.ops import firstboot
from imagekit.errors import CustomizeError, RecipeError
from imagekit.guest import appliance as guest
from imagekit.guest import grow
from imagekit.recipe import load_recipe_string
from tests import guestimage
from tests.events import Events
from tests.guestimage import SIZE, GuestImage

guest_image = guestimage.guest_image  # the session fixture, until conftest.py registers it

REPO = Path(__file__).resolve().parent.parent
SECRET = "correct horse battery staple"
BOB_SECRET = "hunter2"
ALICE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@laptop"
KEY = bytes(32)  # a store's digest key (Layout.digest_key); its value does not matter here
ROOT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRoot root@admin"
SYSPREP_ALL = "machine-id,ssh-hostkeys,logfiles,tmp-files,bash-history"
SYSPREP_ALL += ",dhcp-client-state,package-manager-cache,net-hwaddr"

FULL: dict[str, object] = {
    "selinux_relabel": True,  # written first on purpose: the table decides the order
    "size": "+256M",
    "hostname": "web1.example.org",
    "timezone": "Europe/Berlin",
    "user": ["alice:groups=wheel,adm:shell=/bin/sh:comment=Alice A", "bob:uid=1500"],
    "delete": ["/opt/old/*", "/etc/ssh/sshd_config"],
    "mkdir": ["/opt/app/data", "/usr/local/bin"],
    "copy_in": ["tree:/opt/app"],
    "upload": ["motd:/etc/motd", "tool.sh:/opt/app"],
    "move": ["/opt/app/data:/opt/app/state"],
    "write": ["/etc/app.conf:key = value\n", "/etc/noeol:first"],
    "append_line": ["/etc/app.conf:appended", "/etc/noeol:second", "/etc/new.list:only"],
    "link": ["/opt/app/tool.sh:/usr/local/bin/tool:/usr/local/bin/tool2"],
    "touch": ["/etc/touched"],
    "truncate": ["/etc/issue"],
    "chmod": ["0600:/etc/app.conf"],
    "run_command": ["echo hello from $(id -u) > /root/ran; cat /root/ran"],
    "root_password": "file:root.password",
    "password": ["alice:random", f"bob:password:{BOB_SECRET}"],
    "ssh_inject": ["alice:file:alice.pub", f"alice:string:{ALICE_KEY}", f"root:string:{ROOT_KEY}"],
    "firstboot_command": ["echo first > /root/first"],
    "sysprep": SYSPREP_ALL,
}


def write_inputs(base: Path) -> Path:
    """The local files FULL refers to, relative to ``base`` as to a recipe's directory."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "root.password").write_text(SECRET + "\nignored second line\n")
    (base / "alice.pub").write_text(ALICE_KEY + "\n")
    (base / "motd").write_text("welcome\n")
    (base / "motd").chmod(0o640)
    (base / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (base / "tool.sh").chmod(0o755)
    (base / "tree" / "sub").mkdir(parents=True, exist_ok=True)
    (base / "tree" / "sub" / "data.txt").write_text("data\n")
    (base / "tree" / "top.txt").write_text("top\n")
    if not (base / "tree" / "link").is_symlink():
        (base / "tree" / "link").symlink_to("top.txt")
    return base


def sha512_matches(secret: str, hashed: str) -> bool:
    """Check a $6$ hash independently of imagekit's own hashing."""
    salt = hashed.split("$")[2]
    done = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=secret,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip() == hashed


# --- the table, parsing and keys: no launch ---------------------------------------------------


def test_operations_run_in_table_order_not_toml_order() -> None:
    step = parse_step(FULL, where="test")
    names = [op.name for op in step.operations]
    assert names == [name for name in OPERATIONS if name in FULL]
    assert names[0] == "size" and names[-1] == "selinux_relabel"


def test_unknown_keys_are_named_with_the_valid_ones() -> None:
    with pytest.raises(RecipeError) as error:
        parse_step({"hostname": "a", "hostnme": "b", "frobnicate": 1}, where="r.toml step 1")
    message = str(error.value)
    assert "r.toml step 1" in message and "frobnicate, hostnme" in message
    assert "hostname" in message.split("valid:")[1] and "ssh_inject" in message


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"hostname": 5}, "hostname must be a non-empty string"),
        ({"selinux_relabel": "yes"}, "selinux_relabel must be true or false"),
        ({"write": ["/a:b", 3]}, "write must be a string or a list"),
        ({"hostname": "bad_name!"}, "not a valid hostname"),
        ({"chmod": "rwx:/etc/x"}, "must be octal"),
        ({"write": "relative/path:x"}, "must be absolute"),
        ({"sysprep": "machine-id,bogus"}, "known: bash-history"),
        ({"size": "twenty"}, "expected a size"),
        ({"user": "alice:colour=blue"}, "bad option"),
        ({"ssh_inject": "alice:/key.pub"}, "USER:file:PATH"),
        ({"link": "/target"}, "TARGET:LINK"),
        ({"install": "-rf"}, "is not a package name"),
    ],
)
def test_bad_values_are_refused_before_any_launch(table: dict[str, object], words: str) -> None:
    with pytest.raises(RecipeError, match="test: ") as error:
        parse_step(table, where="test")
    assert words in str(error.value)


def test_errors_about_secrets_do_not_echo_them() -> None:
    with pytest.raises(RecipeError) as error:
        parse_step({"password": "alice:pasword:s3cret"}, where="test")
    assert "s3cret" not in str(error.value)


def test_lists_accept_one_string_and_csv_kinds_split_commas() -> None:
    step = parse_step({"install": ["vim,tmux", "git"], "mkdir": "/srv"}, where="t")
    assert step.get("install") == customize.Operation("install", ("vim", "tmux", "git"))
    assert step.get("mkdir") == customize.Operation("mkdir", ("/srv",))
    assert parse_step({"selinux_relabel": False}, where="t").operations == ()


def test_network_is_needed_by_install_or_when_asked() -> None:
    assert needs_network(parse_step({"install": "vim"}, where="t"))
    assert needs_network(parse_step({"network": True}, where="t"))
    assert not needs_network(parse_step(FULL, where="t"))


def test_canonical_step_is_stable_and_secret_free(tmp_path: Path) -> None:
    base = write_inputs(tmp_path)
    step = parse_step(FULL, where="t")
    first = json.dumps(canonical_step(step, base, KEY), sort_keys=True)
    assert first == json.dumps(
        canonical_step(parse_step(FULL, where="t"), base, KEY), sort_keys=True
    )
    assert SECRET not in first and BOB_SECRET not in first and str(tmp_path) not in first
    assert '"code_version": "1"' in first
    shown = json.dumps(manifest_step(step))
    assert SECRET not in shown and BOB_SECRET not in shown
    assert manifest_step(step)["password"] == ["alice:random", "bob:set"]
    assert manifest_step(step)["root_password"] == "set"


def test_canonical_step_follows_local_file_contents(tmp_path: Path) -> None:
    base = write_inputs(tmp_path)
    step = parse_step(FULL, where="t")
    before = canonical_step(step, base, KEY)
    for change in ("motd", "tree/sub/data.txt", "root.password", "alice.pub"):
        (base / change).write_text("x" + (base / change).read_text())
        after = canonical_step(step, base, KEY)
        assert after != before, change
        before = after
    (base / "motd").chmod(0o600)
    assert canonical_step(step, base, KEY) != before


def test_same_secret_or_key_gives_the_same_key_whatever_its_source(tmp_path: Path) -> None:
    base = write_inputs(tmp_path)
    by_file = parse_step({"root_password": "file:root.password"}, where="t")
    by_text = parse_step({"root_password": f"password:{SECRET}"}, where="t")
    assert canonical_step(by_file, base, KEY) == canonical_step(by_text, base, KEY)
    key_file = parse_step({"ssh_inject": "alice:file:alice.pub"}, where="t")
    key_text = parse_step({"ssh_inject": f"alice:string:{ALICE_KEY}"}, where="t")
    assert canonical_step(key_file, base, KEY) == canonical_step(key_text, base, KEY)


def test_missing_local_files_are_recipe_errors(tmp_path: Path) -> None:
    step = parse_step({"upload": "nothere:/etc/x"}, where="t")
    with pytest.raises(RecipeError, match="nothere"):
        canonical_step(step, tmp_path, KEY)


@pytest.mark.parametrize(
    ("size", "current", "expected"),
    [
        ("20G", 10 << 30, 20 << 30),
        ("512M", None, 512 << 20),
        ("1T", 1 << 30, 1 << 40),
        ("10GiB", 1 << 30, 10 << 30),
        ("+2G", 3 << 30, 5 << 30),
        ("+1000", 1 << 20, (1 << 20) + 1024),  # rounded up to whole sectors
        ("1G", 1 << 30, None),  # already that size
    ],
)
def test_grow_size(size: str, current: int | None, expected: int | None) -> None:
    assert grow_size(parse_step({"size": size}, where="t"), current) == expected


def test_grow_size_refuses_to_shrink_and_needs_a_base_for_relative_sizes() -> None:
    with pytest.raises(RecipeError, match="shrinking"):
        grow_size(parse_step({"size": "1G"}, where="t"), 2 << 30)
    with pytest.raises(ValueError, match="current size"):
        grow_size(parse_step({"size": "+1G"}, where="t"))
    assert grow_size(parse_step({"hostname": "a"}, where="t"), 1) is None


def test_password_hash_falls_back_to_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = customize.sha512_crypt(SECRET)
    monkeypatch.setitem(sys.modules, "crypt", None)  # as on Python 3.13, which dropped it
    fallback = customize.sha512_crypt(SECRET)
    assert fallback.startswith("$6$") and fallback != hashed
    assert sha512_matches(SECRET, hashed) and sha512_matches(SECRET, fallback)


def test_docs_embed_the_operations_table() -> None:
    assert customize.reference() in (REPO / "docs" / "customize.md").read_text()


def test_accel_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEKIT_ACCEL", "tcg")
    assert guest.accel() == "tcg"
    monkeypatch.setenv("IMAGEKIT_ACCEL", "kvm")
    assert guest.accel() == "kvm"
    monkeypatch.setenv("IMAGEKIT_ACCEL", "fast")
    with pytest.raises(RecipeError, match="IMAGEKIT_ACCEL"):
        guest.accel()


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"filesystem": "ntfs"}, "filesystem must be one of"),
        ({"label": "a-label-much-too-long"}, "1 to 16 characters"),
        ({"partition_table": "apm"}, "gpt or mbr"),
        ({"size": 1 << 20}, "at least 32 MiB"),
        ({"content": Path("/etc/hostname")}, "must be a directory or a .tar"),
        ({"content": Path("/nonexistent")}, "does not exist"),
    ],
)
def test_scratch_spec_is_checked(changes: dict[str, Any], words: str) -> None:
    """A scratch source's settings are refused when its recipe loads, before any launch."""
    spec = {"size": 64 << 20, "content": Path("/etc"), **changes}
    settings = "".join(f"{key} = {json.dumps(str(value))}\n" for key, value in spec.items())
    text = f'name = "s"\nversion = "1"\n[source]\nkind = "scratch"\n{settings}'
    with pytest.raises(RecipeError, match=words):
        load_recipe_string(text)


# --- one launch applies everything, one read-only launch reads it back -------------------------


@dataclass
class Customized:
    disk: Path
    result: StepResult
    inspected: guest.InspectedOS
    grown: list[str]
    failures: dict[str, str]  # FAILING key -> the CustomizeError it gave
    launches: int


FAILING = {
    "install": ({"install": "vim"}, "install needs guest network"),
    "truncate": ({"truncate": "/nonexistent"}, "truncate /nonexistent: truncate: "),
    "ssh_inject": ({"ssh_inject": f"carol:string:{ROOT_KEY}"}, "user 'carol' does not exist"),
    "user exists": ({"user": "alice"}, "user 'alice' already exists"),
    "user groups": ({"user": "dave:groups=docker,wheel"}, "the guest has no group docker"),
    "timezone": ({"timezone": "Mars/Olympus"}, "no /usr/share/zoneinfo/Mars/Olympus"),
    "copy_in": ({"copy_in": "tree:/nowhere"}, "no directory /nowhere; create it with mkdir"),
}


@pytest.fixture(scope="session")
def customized(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Customized:
    work = tmp_path_factory.mktemp("customize")
    base_dir = write_inputs(work / "inputs")
    disk = work / "layer.qcow2"
    backing = ["-F", "qcow2", "-b", str(guest_image.path)]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(disk)], check=True)
    step = parse_step(FULL, where="test")
    size = grow_size(step, SIZE)
    assert size == SIZE + (256 << 20)
    subprocess.run(["qemu-img", "resize", "-q", str(disk), str(size)], check=True)
    events = Events()
    drives = [guest.Drive(disk, "qcow2")]
    with guest.launched(drives, network=needs_network(step), progress=events) as g:
        grown = grow.grow_filesystems(g)
        inspected = guest.mount_inspected(g)
        result = apply_step(g, step, inspected, base_dir=base_dir)
        failures = {}
        for name, (table, _) in FAILING.items():  # each fails before it writes anything
            with pytest.raises(CustomizeError) as error:
                apply_step(g, parse_step(table, where="t"), inspected, base_dir=base_dir)
            failures[name] = str(error.value)
    return Customized(disk, result, inspected, grown, failures, events.launches)


FILES = [
    "/etc/hostname", "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/motd",
    "/etc/app.conf", "/etc/noeol", "/etc/new.list", "/etc/issue", "/etc/machine-id",
    "/opt/app/tree/top.txt", "/opt/app/tree/sub/data.txt", "/opt/app/tool.sh", "/root/ran",
    "/home/alice/.ssh/authorized_keys", "/root/.ssh/authorized_keys", "/home/alice/.profile",
    "/etc/sysconfig/network-scripts/ifcfg-eth0", firstboot.FIRSTBOOT_UNIT,
    f"{firstboot.FIRSTBOOT_DIR}/scripts/0001-imagekit", f"{firstboot.FIRSTBOOT_DIR}/firstboot.sh",
]  # fmt: skip
STATS = [
    *FILES, "/etc/touched", "/opt/app/state", "/home/alice", "/home/alice/.ssh", "/home/bob",
    "/opt/app/tree", "/opt/app/tree/sub",
]  # fmt: skip
LINKS = [
    "/etc/localtime", "/usr/local/bin/tool", "/usr/local/bin/tool2", "/opt/app/tree/link",
    firstboot.FIRSTBOOT_WANTS,
]  # fmt: skip
GONE = [
    "/opt/old/a", "/etc/ssh/sshd_config", "/opt/app/data", "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ed25519_key.pub", "/var/lib/dbus/machine-id", "/var/log/messages",
    "/var/log/dnf.log", "/tmp/junk", "/root/.bash_history", "/var/cache/dnf/packages.db",
    "/var/lib/dhclient/dhclient-eth0.leases",
]  # fmt: skip


@dataclass
class Facts:
    text: dict[str, str]
    stat: dict[str, tuple[int, int, int]]  # uid, gid, permission bits
    links: dict[str, str]
    exists: dict[str, bool]
    root_bytes: int
    autorelabel: bool
    launches: int
    kernel_command_line: str  # what the appliance's kernel was booted with, from its own log


@pytest.fixture(scope="session")
def facts(customized: Customized) -> Facts:
    events = Events()
    drives = [guest.Drive(customized.disk, "qcow2", readonly=True)]
    with guest.launched(drives, progress=events) as g:
        g.mount_ro("/dev/sda1", "/")  # inspection again would cost ~10 s under TCG
        stat = {}
        for path in STATS:
            st = g.lstatns(path)
            stat[path] = (st["st_uid"], st["st_gid"], st["st_mode"] & 0o7777)
        vfs = g.statvfs("/")
        return Facts(
            text={path: bytes(g.read_file(path)).decode() for path in FILES},
            stat=stat,
            links={path: g.readlink(path) for path in LINKS},
            exists={path: g.exists(path) for path in GONE},
            root_bytes=vfs["blocks"] * vfs["bsize"],
            autorelabel=g.is_file("/.autorelabel"),
            launches=events.launches,
            kernel_command_line=next(
                line.partition("Kernel command line:")[2]
                for line in g.dmesg().splitlines()
                if "Kernel command line:" in line
            ),
        )


@pytest.mark.guestfs
def test_launch_counts(guest_image: GuestImage, customized: Customized, facts: Facts) -> None:
    assert (guest_image.launches, customized.launches, facts.launches) == (1, 1, 1)


@pytest.mark.guestfs
def test_the_appliance_kernel_is_lightened_under_tcg(facts: Facts) -> None:
    """Under TCG the appliance boots with TCG_KERNEL_ARGS, after libguestfs's own arguments."""
    words = facts.kernel_command_line.split()
    assert "root=UUID" in facts.kernel_command_line  # libguestfs's own arguments are kept
    lightened = [arg in words for arg in guest.TCG_KERNEL_ARGS]
    assert all(lightened) if guest.accel() == "tcg" else not any(lightened)


@pytest.mark.guestfs
def test_inspection(customized: Customized) -> None:
    osi = customized.inspected
    assert (osi.type, osi.distro, osi.major, osi.arch) == ("linux", "fedora", 41, "x86_64")
    assert osi.hostname == "localhost" and osi.package_format == "rpm"
    assert osi.mountpoints == {"/": "/dev/sda1"}
    assert json.loads(json.dumps(osi.to_json()))["product_name"].startswith("Fedora Linux 41")


@pytest.mark.guestfs
def test_disk_and_filesystem_grew(customized: Customized, facts: Facts) -> None:
    assert any("/dev/sda1" in message for message in customized.grown)
    assert facts.root_bytes > SIZE + (200 << 20)


@pytest.mark.guestfs
@pytest.mark.parametrize("name", FAILING)
def test_failures_say_what_to_do(customized: Customized, name: str) -> None:
    assert FAILING[name][1] in customized.failures[name]


@pytest.mark.guestfs
def test_system_settings(facts: Facts) -> None:
    assert facts.text["/etc/hostname"] == "web1.example.org\n"
    assert facts.links["/etc/localtime"] == "/usr/share/zoneinfo/Europe/Berlin"
    assert facts.autorelabel


@pytest.mark.guestfs
def test_files(facts: Facts) -> None:
    text, stat = facts.text, facts.stat
    assert text["/etc/app.conf"] == "key = value\nappended\n"
    assert stat["/etc/app.conf"] == (0, 0, 0o600)
    assert text["/etc/noeol"] == "first\nsecond\n"
    assert text["/etc/new.list"] == "only\n"
    assert text["/etc/motd"] == "welcome\n" and stat["/etc/motd"] == (0, 0, 0o640)
    assert stat["/opt/app/tool.sh"] == (0, 0, 0o755)
    assert text["/opt/app/tree/sub/data.txt"] == "data\n"
    assert stat["/opt/app/tree/sub/data.txt"][:2] == (0, 0)
    assert facts.links["/opt/app/tree/link"] == "top.txt"
    assert facts.links["/usr/local/bin/tool"] == "/opt/app/tool.sh"
    assert facts.links["/usr/local/bin/tool2"] == "/opt/app/tool.sh"
    assert text["/etc/issue"] == ""
    assert not facts.exists["/opt/old/a"] and not facts.exists["/etc/ssh/sshd_config"]
    assert not facts.exists["/opt/app/data"]


@pytest.mark.guestfs
def test_users_and_groups(facts: Facts) -> None:
    passwd = facts.text["/etc/passwd"].splitlines()
    assert "alice:x:1000:1000:Alice A:/home/alice:/bin/sh" in passwd
    assert "bob:x:1500:1500::/home/bob:/bin/sh" in passwd
    group = facts.text["/etc/group"].splitlines()
    assert "wheel:x:10:alice" in group and "adm:x:4:alice" in group
    assert "alice:x:1000:" in group and "bob:x:1500:" in group
    assert "wheel:::alice" in facts.text["/etc/gshadow"].splitlines()
    assert facts.stat["/home/alice"] == (1000, 1000, 0o700)
    assert facts.stat["/home/bob"] == (1500, 1500, 0o700)
    assert facts.text["/home/alice/.profile"] == "export PATH=/bin\n"
    assert facts.stat["/home/alice/.profile"][:2] == (1000, 1000)
    assert facts.stat["/etc/shadow"] == (0, 0, 0o640)


@pytest.mark.guestfs
def test_passwords(customized: Customized, facts: Facts) -> None:
    shadow = {row.split(":")[0]: row.split(":")[1] for row in facts.text["/etc/shadow"].split()}
    assert shadow["root"].startswith("$6$") and sha512_matches(SECRET, shadow["root"])
    assert sha512_matches(BOB_SECRET, shadow["bob"])
    generated = customized.result.generated_passwords
    assert list(generated) == ["alice"] and len(generated["alice"]) == 20
    assert sha512_matches(generated["alice"], shadow["alice"])
    assert any("bob" in m and "in clear" in m for m in customized.result.messages)


@pytest.mark.guestfs
def test_ssh_keys(facts: Facts) -> None:
    assert facts.text["/home/alice/.ssh/authorized_keys"] == ALICE_KEY + "\n"  # not twice
    assert facts.stat["/home/alice/.ssh/authorized_keys"] == (1000, 1000, 0o600)
    assert facts.stat["/home/alice/.ssh"] == (1000, 1000, 0o700)
    assert facts.text["/root/.ssh/authorized_keys"] == ROOT_KEY + "\n"


@pytest.mark.guestfs
def test_run_command_and_firstboot(customized: Customized, facts: Facts) -> None:
    assert facts.text["/root/ran"] == "hello from 0\n"
    assert customized.result.command_output == ["hello from 0\n"]
    script = f"{firstboot.FIRSTBOOT_DIR}/scripts/0001-imagekit"
    assert facts.text[script] == "#!/bin/sh\necho first > /root/first\n"
    assert facts.stat[script][2] == 0o755
    assert (
        "ExecStart=/usr/lib/imagekit/firstboot/firstboot.sh" in facts.text[firstboot.FIRSTBOOT_UNIT]
    )
    assert facts.links[firstboot.FIRSTBOOT_WANTS] == firstboot.FIRSTBOOT_UNIT
    assert any("no systemd" in m for m in customized.result.messages)


@pytest.mark.guestfs
def test_sysprep(facts: Facts) -> None:
    assert facts.text["/etc/machine-id"] == ""
    assert not any(facts.exists.values()), [p for p, there in facts.exists.items() if there]
    assert "HWADDR" not in facts.text["/etc/sysconfig/network-scripts/ifcfg-eth0"]
    assert "DEVICE=eth0" in facts.text["/etc/sysconfig/network-scripts/ifcfg-eth0"]
