"""Boot checks against a disk built in the session (tests/bootdisk.py), booted under real qemu.

Each boot costs ~10 s under TCG. The guest's init proves what reached it: it prints the seed's
instance-id, runs the seed's runcmd, and with keys in the seed runs dropbear for the SSH check.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from imagekit.boot import BootOptions, SeedSpec
from imagekit.boot.check import DEFAULT_MARKERS
from imagekit.core.digest import file_digest
from imagekit.errors import BootError, RecipeError
from imagekit.store import Store
from tests.bootdisk import MARKER, REF, boot_store_fixture, bootdisk_fixture, has_sshd  # noqa: F401
from tests.clirun import imagekit
from tests.events import Events

MEMORY = 256  # MiB: the guest is an initramfs


def qemu_processes(path: Path) -> list[int]:
    """Live qemu processes whose command line mentions ``path`` (the overlay is under it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline and "qemu-system" in cmdline:
            found.append(int(entry.name))
    return found


def test_marker_is_seen_and_the_seed_reaches_the_guest(boot_store: Store) -> None:
    image = boot_store.image(REF)
    before = file_digest(image.path)
    events = Events()
    spec = SeedSpec(hostname="guest1", runcmd=("true secret-token-4711",))
    options = BootOptions(cloud_init=spec, marker=MARKER, memory_mib=MEMORY, timeout=120)

    report = boot_store.boot(REF, options, progress=events)

    assert report.reason == "marker" and report.marker == MARKER
    assert report.accel in ("kvm", "tcg") and report.seconds > 0
    assert events.boots == 1
    instance = report.seed.split()[-1] if report.seed else ""
    log = report.console_log.read_text()
    assert f"bootdisk: instance-id: {instance}" in log  # the guest read the seed's meta-data
    assert report.command[0].endswith("qemu-system-x86_64")
    assert "hostfwd=tcp:127.0.0.1:" in " ".join(report.command)
    assert file_digest(image.path) == before == image.disk_digest  # the blob is untouched
    assert list(boot_store.tmp_dir.glob("new-*")) == []  # the overlay is gone
    assert qemu_processes(boot_store.root) == []
    for path in boot_store.root.rglob("*"):  # the seed's content never enters the store
        assert not path.is_file() or b"secret-token-4711" not in path.read_bytes()


def test_cli_seed_then_boot_stops_at_cloud_inits_finished_line(
    boot_store: Store, tmp_path: Path
) -> None:
    seed = tmp_path / "seed.iso"
    made = imagekit(
        "seed",
        "-o",
        str(seed),
        "--runcmd",
        "echo Cloud-init v. 0.0-bootdisk finished",
    )
    assert made.returncode == 0, made.stderr
    booted = imagekit(
        "boot", REF, "--seed", str(seed), "--memory", str(MEMORY), "--json", store=boot_store
    )
    assert booted.returncode == 0, booted.stderr
    report = json.loads(booted.stdout)
    assert report["ready"] is True and report["reason"] == "marker"
    assert report["marker"] == "Cloud-init v. 0.0-bootdisk finished"  # a default marker
    assert report["seed"] == str(seed)
    assert Path(report["console_log"]).is_file()
    assert report["accel"] in ("kvm", "tcg") and isinstance(report["seconds"], float)


def test_seedless_boot_serves_the_seed_over_http(boot_store: Store) -> None:
    options = BootOptions(
        cloud_init=SeedSpec(hostname="net1"),
        seedless=True,
        marker=MARKER,
        memory_mib=MEMORY,
        timeout=120,
    )
    report = boot_store.boot(REF, options)
    assert report.seed is not None and re.fullmatch(
        r"ds=nocloud;s=http://10\.0\.2\.2:\d+/", report.seed
    )
    log = report.console_log.read_text()
    assert "bootdisk: seed from http://10.0.2.2:" in log
    assert "bootdisk: instance-id: iid-" in log  # fetched over qemu's network from loopback


def test_a_disk_that_cannot_boot_fails_with_the_console_tail(
    boot_store: Store, tmp_path: Path
) -> None:
    zeros = tmp_path / "zeros.raw"
    zeros.write_bytes(bytes(8 << 20))
    boot_store.import_file(zeros, "zeros:1", disk_format="raw")
    started = time.monotonic()
    failed = imagekit(
        "boot", "zeros:1", "--timeout", "60", "--memory", str(MEMORY), store=boot_store
    )
    assert time.monotonic() - started < 60
    assert failed.returncode == 8, failed.stderr
    assert failed.stderr.startswith("imagekit: error: the guest failed ('No bootable device'")
    assert "console tail:" in failed.stderr and "Boot failed: not a bootable disk" in failed.stderr
    assert qemu_processes(boot_store.root) == []


def test_timeout_ends_a_guest_that_never_gets_ready(boot_store: Store) -> None:
    options = BootOptions(
        cloud_init=SeedSpec(runcmd=("touch /hold",)),
        marker="a marker this guest never prints",
        memory_mib=MEMORY,
        timeout=25,
        inactivity=None,
    )
    started = time.monotonic()
    with pytest.raises(BootError, match=r"did not finish within 25 s \(timeout\)") as caught:
        boot_store.boot(REF, options)
    assert time.monotonic() - started < 25 + 15
    assert MARKER in str(caught.value)  # the console tail: the guest did come up
    assert qemu_processes(boot_store.root) == []
    assert list(boot_store.tmp_dir.glob("new-*")) == []


def test_ssh_with_a_per_boot_key(boot_store: Store) -> None:
    if not has_sshd():
        pytest.skip("dropbear-bin is not installed (scripts/setup.sh installs it)")
    options = BootOptions(ssh="cat /cidata/meta-data; id -un", memory_mib=MEMORY, timeout=180)
    report = boot_store.boot(REF, options)
    assert report.reason == "ssh"
    assert report.ssh_output is not None
    assert "instance-id: iid-" in report.ssh_output
    assert report.ssh_output.strip().endswith("imagekit")  # the user the seed made
    assert "Pubkey auth succeeded for 'imagekit'" in report.console_log.read_text()
    assert qemu_processes(boot_store.root) == []


def test_console_attaches_the_serial_console(boot_store: Store) -> None:
    booted = imagekit(
        "boot", REF, "--console", "--memory", str(MEMORY), "--marker", MARKER, store=boot_store
    )
    assert booted.returncode == 0, booted.stderr
    assert "bootdisk: booted" in booted.stdout and MARKER in booted.stdout  # our stdout
    assert "ready after" in booted.stdout and "exited" in booted.stdout


def test_default_markers() -> None:
    def ready(text: str) -> str | None:
        return next((m[0].strip() for p in DEFAULT_MARKERS if (m := p.search(text))), None)

    finished = (
        "Cloud-init v. 24.4-0ubuntu1 finished at Mon, 01 Dec 2025 10:00:00 +0000. "
        "Datasource DataSourceNoCloud [seed=/dev/sr0].  Up 20.51 seconds"
    )
    assert ready(f"boot\n{finished}\n") == finished
    assert ready("Fedora Linux 41 (Server Edition)\nweb1 login: ") == "web1 login:"
    assert ready("Last login: Mon Dec  1 10:00:00 on ttyS0\n[root@web1 ~]# ") is None
    assert ready("Cloud-init v. 24.4 running 'init' at Mon") is None


def test_bad_options_boot_nothing(boot_store: Store, tmp_path: Path) -> None:
    events = Events()
    seed = tmp_path / "seed.iso"
    seed.write_bytes(b"")
    for options, match in (
        (BootOptions(seed=seed, cloud_init=SeedSpec()), "not both"),
        (BootOptions(seed=tmp_path / "missing.iso"), "is not a file"),
        (BootOptions(console=True, ssh="true"), "exclude each other"),
        (BootOptions(memory_mib=0), "at least 64 MiB"),
        (BootOptions(cloud_init=SeedSpec(hostname="bad_name")), "not a valid host name"),
    ):
        with pytest.raises(RecipeError, match=match):
            boot_store.boot(REF, options, progress=events)
    assert events.boots == 0
    bad = imagekit("boot", REF, "--cloud-init", "hostname=a,colour=blue", store=boot_store)
    assert bad.returncode == 2 and "'colour=blue'" in bad.stderr
