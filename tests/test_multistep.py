"""Consecutive uncached steps in one appliance session, each still its own cached layer.

One module-scoped store: a scratch base, five steps built in one launch, a rebuild with step 3
changed, and a build on a base whose recorded inspection no longer matches. One read-only launch
then reads every layer's guest view back (files inside, not bytes).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import imagekit
from imagekit.build import BuildResult
from imagekit.build.cache import BuildCache
from imagekit.guest import appliance as guest
from imagekit.store import Store
from tests.events import Events
from tests.guestimage import build_guest_tree

pytestmark = pytest.mark.guestfs

STEPS = [
    '[[customize]]\nhostname = "one"\nmkdir = ["/srv"]\nwrite = ["/srv/s1:one"]\n',
    '[[customize]]\nwrite = ["/srv/s2:two"]\n',
    '[[customize]]\nmkdir = ["/srv/d3"]\nwrite = ["/srv/s3:three"]\n',
    '[[customize]]\nappend_line = ["/etc/hosts:10.0.0.4 four"]\n',
    '[[customize]]\nwrite = ["/srv/s1:five"]\nchmod = ["0600:/srv/s2"]\n',
]
CHANGED_THREE = STEPS[2].replace(":three", ":THREE")
FILES = ["/etc/hostname", "/srv/s1", "/srv/s2", "/srv/s3", "/etc/hosts"]


def expected_after(steps: int, three: str = "three") -> dict[str, str]:
    """The guest view after the first ``steps`` steps: what a one-step-at-a-time build shows."""
    view = {
        "/etc/hostname": "localhost\n",
        "/srv/s1": "missing",
        "/srv/s2": "missing",
        "/srv/s3": "missing",
        "/etc/hosts": "127.0.0.1 localhost\n",
        "mode /srv/s2": "missing",
    }
    if steps >= 1:
        view |= {"/etc/hostname": "one\n", "/srv/s1": "one"}
    if steps >= 2:
        view |= {"/srv/s2": "two", "mode /srv/s2": "0644"}
    if steps >= 3:
        view |= {"/srv/s3": three}
    if steps >= 4:
        view |= {"/etc/hosts": "127.0.0.1 localhost\n10.0.0.4 four\n"}
    if steps >= 5:
        view |= {"/srv/s1": "five", "mode /srv/s2": "0600"}
    return view


def write_recipe(directory: Path, name: str, steps: list[str]) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nversion = "1"\n[source]\nkind = "scratch"\ncontent = "tree"\n'
        'size = "256M"\nfilesystem = "ext4"\nlabel = "root"\n' + "\n".join(steps)
    )
    return path


@dataclass
class Session:
    store: Store
    first: BuildResult
    first_events: Events
    changed: BuildResult
    changed_events: Events
    stale: BuildResult
    stale_events: Events
    views: dict[str, dict[str, str]]  # layer digest -> guest view


def guest_view(g: Any, device: str) -> dict[str, str]:
    g.mount_ro(device, "/")
    view = {}
    for name in FILES:
        view[name] = g.cat(name) if g.is_file(name) else "missing"
    s2 = "/srv/s2"
    view["mode " + s2] = f"{g.statns(s2)['st_mode'] & 0o7777:04o}" if g.exists(s2) else "missing"
    g.umount_all()
    return view


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    directory = tmp_path_factory.mktemp("multistep")
    build_guest_tree(directory / "tree")
    store = Store(directory / "store")
    first_events = Events()
    first = store.build(
        imagekit.load_recipe(write_recipe(directory, "five", STEPS)), progress=first_events
    )
    changed_events = Events()
    steps = [*STEPS[:2], CHANGED_THREE, *STEPS[3:]]
    changed = store.build(
        imagekit.load_recipe(write_recipe(directory, "changed", steps)), progress=changed_events
    )
    # A stale record: the base's inspection as kept, but with a filesystem UUID that is not the
    # disk's (a disk replaced under the same digest cannot happen; a wrong record can).
    base = first.image.disks[0]
    cache = BuildCache(store)
    record = cache.inspection(base.digest)
    assert isinstance(record, dict)
    cache.save_inspection(base.digest, record | {"uuids": dict.fromkeys(record["uuids"], "0")})
    stale_events = Events()
    stale = store.build(
        imagekit.load_recipe(write_recipe(directory, "stale", ['[[customize]]\ntouch = ["/x"]\n'])),
        progress=stale_events,
    )
    layers = [*first.image.disks[1:], *changed.image.disks[3:]]
    drives = [guest.Drive(store.blob_path(d.digest), "qcow2", readonly=True) for d in layers]
    views = {}
    with guest.launched(drives) as g:
        for letter, disk in zip("abcdefgh", layers, strict=False):
            views[disk.digest] = guest_view(g, f"/dev/sd{letter}1")
    return Session(store, first, first_events, changed, changed_events, stale, stale_events, views)


def inspect_events(events: Events) -> list[str]:
    return [e.message for e in events.seen if e.stage == "inspect"]


def test_five_uncached_steps_run_in_one_launch(session: Session) -> None:
    # the scratch disk, then one session for all five steps
    assert session.first_events.launches == 2
    assert [layer.cached for layer in session.first.layers] == [False] * 6
    assert len(session.first.image.disks) == 6
    # the base had no inspection recorded: inspected once, at the session's start
    assert inspect_events(session.first_events) == [
        "inspecting the guest (no recorded inspection matches)"
    ]


def test_each_layer_is_intact_thin_and_shows_its_steps(session: Session) -> None:
    disks = session.first.image.disks
    for number, disk in enumerate(disks[1:], 1):
        path = session.store.blob_path(disk.digest)
        check = subprocess.run(
            ["qemu-img", "check", "-U", "-f", "qcow2", "--output=json", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        report = json.loads(check.stdout)
        assert not report.get("corruptions") and not report.get("leaks")
        # Only this step's clusters: a cumulative snapshot would grow with every step.
        assert disk.size < 2 << 20
        assert session.views[disk.digest] == expected_after(number), f"layer {number}"
    hostnames = [r["inspection"]["hostname"] for r in session.first.image.provenance["steps"]]
    assert hostnames == ["one"] * 5  # derived from step 1, not inspected again


def test_changing_step_three_reuses_one_and_two_in_one_launch(session: Session) -> None:
    first, changed = session.first.image.disks, session.changed.image.disks
    assert session.changed_events.launches == 1
    assert [layer.cached for layer in session.changed.layers] == [True] * 3 + [False] * 3
    assert changed[:3] == first[:3]
    assert not {d.digest for d in changed[3:]} & {d.digest for d in first[3:]}
    # layer 2's record said what the guest is, and its UUIDs still match: no inspect_os
    assert inspect_events(session.changed_events) == ["mounted as the recorded inspection says"]
    assert session.views[changed[-1].digest] == expected_after(5, three="THREE")


def test_a_stale_recorded_inspection_falls_back_to_inspecting(session: Session) -> None:
    assert session.stale_events.launches == 1
    assert inspect_events(session.stale_events) == [
        "inspecting the guest (no recorded inspection matches)"
    ]
    inspection = session.stale.image.provenance["inspection"]
    assert inspection["distro"] == "fedora"
    assert "0" not in inspection["uuids"].values()
    cache = BuildCache(session.store)
    assert cache.inspection(session.first.image.disks[0].digest) == inspection  # fixed


def test_an_older_record_without_uuids_is_not_trusted() -> None:
    record = {
        "root": "/dev/sda1",
        "type": "linux",
        "distro": "fedora",
        "product_name": "Fedora",
        "major": 41,
        "minor": 0,
        "arch": "x86_64",
        "hostname": "h",
        "package_format": "rpm",
        "package_management": "dnf",
        "mountpoints": {"/": "/dev/sda1"},
    }
    assert guest.InspectedOS.from_json(record) is None
    assert guest.InspectedOS.from_json(record | {"uuids": {"/dev/sda1": ""}}) is None
    assert guest.InspectedOS.from_json(record | {"uuids": {"/dev/sdb1": "u"}}) is None
    known = guest.InspectedOS.from_json(record | {"uuids": {"/dev/sda1": "u"}})
    assert known is not None and known.root == "/dev/sda1"


@pytest.mark.parametrize(
    ("table", "kept"),
    [
        ({"hostname": "web1", "write": ["/etc/motd:hi"], "ssh_inject": ["root:string:k"]}, True),
        ({"append_line": ["/etc/hosts:10.0.0.1 db"], "link": ["/srv/app:/opt/app"]}, True),
        ({"write": ["/etc/os-release:ID=other"]}, False),
        ({"delete": ["/etc"]}, False),
        ({"delete": ["/etc/*"]}, False),
        ({"upload": ["f:/usr/bin/dnf"]}, False),
        ({"run_command": ["true"]}, False),
    ],
)
def test_only_steps_touching_what_inspection_reads_are_inspected_again(
    table: dict[str, object], kept: bool
) -> None:
    from imagekit.customize import inspected_after, parse_step

    before = guest.InspectedOS(
        root="/dev/sda1",
        type="linux",
        distro="fedora",
        product_name="Fedora",
        major=41,
        minor=0,
        arch="x86_64",
        hostname="localhost",
        package_format="rpm",
        package_management="dnf",
        mountpoints={"/": "/dev/sda1"},
        uuids={"/dev/sda1": "u"},
    )
    after = inspected_after(parse_step(table, where="t"), before)
    if not kept:
        assert after is None
        return
    assert after is not None
    assert after.hostname == table.get("hostname", "localhost")
    assert after.distro == "fedora"
