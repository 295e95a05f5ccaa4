"""Provision against a real libvirtd the test starts (tests/libvirtd.py), booting tests/bootdisk.py.

The daemon is the system instance, so qemu runs as ``libvirt-qemu`` as it does on a host: an
overlay works on a store given to that group, a copy works from any store, and an overlay on an
owner-only store fails with the fix in the error and nothing left behind. The guest's console
log (libvirt writes it beside the disk) shows the disk's marker and the seed's instance-id.
Every VM here has user networking or none: nothing is reachable from outside the host.
"""

from __future__ import annotations

import grp
import json
import os
import shlex
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagekit.boot import ProvisionOptions, SeedSpec
from imagekit.boot.domain import (
    DomainSpec,
    Network,
    VmRecord,
    domain_xml,
    files_in_use,
    read_record,
    virt_install_argv,
)
from imagekit.boot.hypervisor import check_local, is_system
from imagekit.boot.osinfo import OsInfo, candidates, lookup
from imagekit.core.digest import file_digest, hexpart
from imagekit.disk import qcow2
from imagekit.errors import RecipeError, StoreError
from imagekit.guest.appliance import accel
from imagekit.oci.layout import Descriptor
from imagekit.oci.media import MEDIA_DISK_QCOW2, PARENT_ANNOTATION
from imagekit.store import Store
from tests.bootdisk import MARKER, REF, bootdisk_fixture  # noqa: F401
from tests.clirun import imagekit
from tests.events import Events
from tests.libvirtd import QEMU_USER, Libvirtd, libvirtd_fixture, qemu_running, traversable_dir  # noqa: F401

MEMORY = 256  # MiB: the guest is an initramfs


@pytest.fixture(name="work")
def work_fixture() -> Iterator[Path]:
    """A directory qemu's user can pass through, for stores and pools."""
    path = traversable_dir("imagekit-provision-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="pool")
def pool_fixture(work: Path) -> Path:
    pool = work / "pool"
    pool.mkdir(mode=0o711)
    return pool


@pytest.fixture(name="group_store")
def group_store_fixture(work: Path, bootdisk: Path) -> Store:
    """A store given to qemu's group, so the VM's qemu can read its blobs (docs/vm.md), with
    ``bootdisk:1`` as two layers: the disk and an empty qcow2 layer on it, as builds make."""
    try:
        grp.getgrnam(QEMU_USER)
    except KeyError:
        pytest.skip(f"group {QEMU_USER} does not exist (libvirt-daemon-system makes it)")
    store = Store(work / "group-store", group=QEMU_USER)
    base = store.import_file(bootdisk, "base:1").disk
    layer = work / "layer"
    layer.mkdir()
    name = hexpart(base.digest)
    (layer / name).symlink_to(store.blob_path(base.digest))
    top = layer / "top.qcow2"
    qemu = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", name, str(top)]
    subprocess.run(qemu, check=True)
    temp = store.new_temp()
    shutil.copyfile(top, temp)
    committed = store.commit_file(temp, file_digest(temp), MEDIA_DISK_QCOW2, annotations={})
    parent = {PARENT_ANNOTATION: base.digest}
    top_layer = Descriptor(committed.media_type, committed.digest, committed.size, parent)
    store.tag(REF, store.write_manifest({"name": "bootdisk"}, [base, top_layer]))
    store.remove("base:1")
    shutil.rmtree(layer)
    return store


@pytest.fixture(name="owner_store")
def owner_store_fixture(work: Path, bootdisk: Path) -> Store:
    """A store with the default permissions: its owner's alone (0700)."""
    store = Store(work / "owner-store")
    store.import_file(bootdisk, REF)
    return store


def wait_for(path: Path, text: str, timeout: float = 180) -> str:
    """The file's content once it holds ``text`` (a guest's console log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not reach {path} within {timeout} s")


def domain_names(daemon: Libvirtd) -> list[str]:
    listed = subprocess.run(
        ["virsh", "-q", "-c", daemon.uri, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(filter(None, listed.stdout.split()))


def make_seed(directory: Path, *runcmd: str) -> Path:
    seed = directory / "seed.iso"
    Store.seed(seed, SeedSpec(runcmd=runcmd))
    return seed


def test_provision_boots_is_listed_keeps_its_chain_and_is_removed(
    libvirtd: Libvirtd, group_store: Store, pool: Path, tmp_path: Path
) -> None:
    image = group_store.image(REF)
    assert len(image.disks) == 2  # libvirt gets the whole chain, layer by layer
    blobs = [group_store.blob_path(d.digest) for d in image.disks]
    owners = [(p.stat().st_uid, p.stat().st_gid) for p in blobs]
    seed = make_seed(tmp_path, "touch /hold")  # tmp_path is 0700: qemu reads the pool's copy
    options = ProvisionOptions(
        "vm1", seed=seed, memory_mib=MEMORY, network="user", connect=libvirtd.uri, pool=pool
    )
    events = Events()

    report = group_store.provision(REF, options, progress=events)

    assert report.defined and report.state == "running" and events.boots == 1
    record = report.record
    assert record.disk == pool / "vm1.qcow2" and record.mode == "overlay"
    assert record.seed == pool / "vm1-seed.iso" and record.seed.read_bytes() == seed.read_bytes()
    assert qcow2.backing_name(record.disk) == os.path.abspath(blobs[-1])  # absolute, into blobs/
    (root,) = group_store.roots()
    assert (root.path, root.kind, root.command) == (record.disk, "vm", "provision")
    assert root.blobs == tuple(d.digest for d in image.disks) and root.ref == REF
    console = wait_for(record.console, MARKER)
    assert "bootdisk: seed on /dev/sr0" in console  # the seed is the VM's CD-ROM
    assert qemu_running("vm1")
    live = subprocess.run(
        ["virsh", "-c", libvirtd.uri, "dumpxml", "vm1"], capture_output=True, text=True, check=True
    )
    assert ET.fromstring(live.stdout).get("type") == ("kvm" if report.accel == "kvm" else "qemu")
    assert report.accel == accel()
    # relabel="no": libvirt gave qemu the VM's own files, never the store's blobs
    assert [(p.stat().st_uid, p.stat().st_gid) for p in blobs] == owners

    listed = imagekit("vms", "--connect", libvirtd.uri, "--json", store=group_store)
    assert listed.returncode == 0, listed.stderr
    (vm,) = json.loads(listed.stdout)
    assert (vm["name"], vm["state"], vm["ref"], vm["manifest"]) == (
        "vm1",
        "running",
        REF,
        image.digest,
    )
    assert (vm["disk"], vm["mode"], vm["root_status"]) == (str(record.disk), "overlay", "yes")
    assert vm["root"]["path"] == str(record.disk) and vm["seed"] == str(record.seed)
    table = imagekit("vms", "--connect", libvirtd.uri, store=group_store).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "IMAGE", "ROOT", "DISK"]
    assert table[1].split() == ["vm1", "running", REF, "yes", str(record.disk)]

    group_store.remove(REF)  # the ref goes; the running VM's chain must not
    collected = group_store.gc()
    assert collected.dropped_roots == {} and all(p.exists() for p in blobs)
    assert group_store.fsck().ok
    with pytest.raises(RecipeError, match="a domain named vm1 exists"):
        group_store.provision(image.digest, options)
    assert len(group_store.roots()) == 1 and record.disk.exists()

    removed = imagekit("provision", "--remove", "vm1", "--connect", libvirtd.uri, store=group_store)

    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("removed vm1: domain undefined, deleted ")
    assert domain_names(libvirtd) == [] and not qemu_running("vm1")
    assert list(pool.iterdir()) == [] and group_store.roots() == []
    freed = group_store.gc()
    assert {d.digest for d in image.disks} <= set(freed.removed_blobs)
    assert not any(p.exists() for p in blobs)


def test_a_copy_needs_nothing_of_an_owner_only_store(
    libvirtd: Libvirtd, owner_store: Store, pool: Path
) -> None:
    args = ["--name", "copy1", "--copy", "--network", "none", "--memory", str(MEMORY)]
    made = imagekit(
        "provision", REF, *args, "--connect", libvirtd.uri, "--pool", str(pool), store=owner_store
    )

    assert made.returncode == 0, made.stderr
    disk, console = pool / "copy1.qcow2", pool / "copy1.console.log"
    assert made.stdout.splitlines() == [
        f"copy1: running on {libvirtd.uri} ({accel()})",  # as the boot check's
        f"disk: {disk} (copy of {REF})",
        f"console: virsh -c {libvirtd.uri} console copy1 (log: {console})",
    ]
    assert qcow2.backing_name(disk) is None  # standalone
    assert owner_store.roots() == []
    wait_for(console, MARKER)
    (vm,) = owner_store.vms(connect=libvirtd.uri)
    assert (vm.name, vm.record.mode, vm.root_status, vm.root) == ("copy1", "copy", "copy", None)

    removed = owner_store.unprovision("copy1", connect=libvirtd.uri)

    assert removed.root is False and disk in removed.files
    assert domain_names(libvirtd) == [] and list(pool.iterdir()) == []


def test_an_overlay_qemu_cannot_read_fails_and_leaves_nothing_until_the_store_is_shared(
    libvirtd: Libvirtd, owner_store: Store, pool: Path
) -> None:
    options = ProvisionOptions(
        "vm2", memory_mib=MEMORY, network="none", connect=libvirtd.uri, pool=pool
    )
    events = Events()
    with pytest.raises(
        StoreError, match=r"qemu user cannot read the store's blobs; pass --copy"
    ) as caught:
        owner_store.provision(REF, options, progress=events)
    assert "Permission denied" in str(caught.value) and "\n" not in str(caught.value)
    assert events.boots == 1  # libvirt tried, and its refusal was undone
    assert domain_names(libvirtd) == [] and list(pool.iterdir()) == []
    assert owner_store.roots() == [] and not qemu_running("vm2")

    # What docs/vm.md says to do for an existing store: set the group, run what fsck prints.
    shared = Store(owner_store.root, group=QEMU_USER)
    (problem,) = [p for p in shared.fsck().problems if "cannot enter the store" in p]
    fix = problem.split("run `", 1)[1].rsplit("`", 1)[0]
    subprocess.run(["sh", "-c", fix], check=True)
    report = shared.provision(REF, options)
    assert report.state == "running" and shared.fsck().ok
    shared.unprovision("vm2", connect=libvirtd.uri)
    assert domain_names(libvirtd) == [] and shared.roots() == []


def test_print_makes_nothing_and_virt_install_accepts_the_line(
    libvirtd: Libvirtd, group_store: Store, pool: Path, tmp_path: Path
) -> None:
    if shutil.which("virt-install") is None:
        pytest.skip("virt-install is not installed (scripts/setup.sh installs virtinst)")
    seed = make_seed(tmp_path)
    args = ["provision", REF, "--name", "vm3", "--connect", libvirtd.uri, "--pool", str(pool)]
    args += ["--seed", str(seed), "--network", "user", "--memory", str(MEMORY), "--vcpus", "2"]
    printed = imagekit(*args, "--print", store=group_store)
    assert printed.returncode == 0, printed.stderr
    argv = shlex.split(printed.stdout)
    assert argv[:3] == ["virt-install", "--connect", libvirtd.uri] and "--import" in argv
    assert f"imagekit export {REF} -o {pool / 'vm3.qcow2'} --link" in printed.stderr
    ours = json.loads(imagekit(*args, "--print", "--json", store=group_store).stdout)
    assert ours["defined"] is False and ours["virt_install"] == argv
    assert list(pool.iterdir()) == [] and group_store.roots() == []  # nothing made
    assert domain_names(libvirtd) == []

    group_store.image(REF).export(pool / "vm3.qcow2", link=True)  # what stderr says to run
    theirs = subprocess.run([*argv, "--print-xml"], capture_output=True, text=True, timeout=120)
    assert theirs.returncode == 0, theirs.stderr
    assert _essentials(theirs.stdout) == _essentials(ours["xml"])
    dry = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert domain_names(libvirtd) == []


def _essentials(xml: str) -> dict[str, object]:
    """What must agree between our domain and virt-install's: the machine and the devices."""
    root = ET.fromstring(xml)
    memory = root.find("memory")
    assert memory is not None and memory.text is not None
    kib = int(memory.text) * (1024 if memory.get("unit") == "MiB" else 1)
    disks = root.findall("./devices/disk")
    return {
        "type": root.get("type"),
        "name": root.findtext("name"),
        "memory_kib": kib,
        "vcpus": root.findtext("vcpu"),
        "machine": root.find("./os/type").get("machine"),  # type: ignore[union-attr]
        "cpu": root.find("cpu").get("mode"),  # type: ignore[union-attr]
        "disks": [
            (d.get("device"), d.find("source").get("file"), d.find("target").get("bus"))  # type: ignore[union-attr]
            for d in disks
        ],
        "interfaces": [i.get("type") for i in root.findall("./devices/interface")],
        "serial_log": root.find("./devices/serial/log").get("file"),  # type: ignore[union-attr]
    }


def test_remove_refuses_a_domain_imagekit_did_not_make(
    libvirtd: Libvirtd, group_store: Store, tmp_path: Path
) -> None:
    xml = tmp_path / "other.xml"
    xml.write_text(
        '<domain type="qemu"><name>other</name><memory unit="MiB">64</memory>'
        '<os><type arch="x86_64">hvm</type></os></domain>'
    )
    subprocess.run(["virsh", "-q", "-c", libvirtd.uri, "define", str(xml)], check=True)
    try:
        refused = imagekit(
            "provision", "--remove", "other", "--connect", libvirtd.uri, store=group_store
        )
        assert refused.returncode == 2
        assert "other was not made by imagekit provision" in refused.stderr
        assert domain_names(libvirtd) == ["other"]
        assert group_store.vms(connect=libvirtd.uri) == []  # listed only if imagekit made it
        missing = imagekit(
            "provision", "--remove", "nothing", "--connect", libvirtd.uri, store=group_store
        )
        assert missing.returncode == 2 and "there is no domain 'nothing'" in missing.stderr
    finally:
        subprocess.run(["virsh", "-q", "-c", libvirtd.uri, "undefine", "other"], check=True)


# Without a daemon: the plan on paper, the options, the URIs, the OS guess.


def _spec(accel: str, network: Network, chain: tuple[tuple[Path, str], ...]) -> DomainSpec:
    record = VmRecord(
        store="/store",
        ref="web:1",
        manifest="sha256:" + "a" * 64,
        image="sha256:" + "b" * 64,
        disk=Path("/pool/web1.qcow2"),
        mode="overlay" if chain else "copy",
        seed=Path("/pool/web1-seed.iso"),
        console=Path("/pool/web1.console.log"),
        created="2026-01-01T00:00:00Z",
    )
    osinfo = OsInfo("fedora41", "http://fedoraproject.org/fedora/41")
    return DomainSpec("web1", accel, 2048, 2, network, record, chain, osinfo)


def test_domain_xml_and_the_virt_install_line_say_the_same() -> None:
    chain = ((Path("/store/blobs/sha256/top"), "qcow2"), (Path("/store/blobs/sha256/base"), "raw"))
    spec = _spec("kvm", Network.parse("bridge=br0"), chain)
    root = ET.fromstring(domain_xml(spec))

    assert root.get("type") == "kvm" and root.findtext("name") == "web1"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert root.find("./os/type").get("machine") == "pc"  # type: ignore[union-attr]
    disk = root.find("./devices/disk[@device='disk']")
    assert disk is not None and disk.find("source").get("file") == "/pool/web1.qcow2"  # type: ignore[union-attr]
    layers, node = [], disk.find("backingStore")
    while node is not None and node.find("source") is not None:
        source = node.find("source")
        assert source.find("seclabel").attrib == {"model": "dac", "relabel": "no"}  # type: ignore[union-attr]
        layers.append((source.get("file"), node.find("format").get("type")))  # type: ignore[union-attr]
        node = node.find("backingStore")
    assert layers == [("/store/blobs/sha256/top", "qcow2"), ("/store/blobs/sha256/base", "raw")]
    assert node is not None and list(node) == []  # an empty <backingStore/> ends the chain
    interface = root.find("./devices/interface")
    assert interface is not None and interface.get("type") == "bridge"
    assert interface.find("source").attrib == {"bridge": "br0"}  # type: ignore[union-attr]
    assert files_in_use(domain_xml(spec)) == {  # what --remove may delete: never the blobs
        Path("/pool/web1.qcow2"),
        Path("/pool/web1-seed.iso"),
        Path("/pool/web1.console.log"),
    }
    metadata = root.find("metadata")
    assert metadata is not None
    element = metadata.find("{urn:imagekit:libvirt:vm:1}vm")
    assert (
        element is not None and read_record(ET.tostring(element, encoding="unicode")) == spec.record
    )
    assert read_record('<vm store="/s"/>') is None and read_record("not xml") is None

    argv = virt_install_argv(spec, None)
    assert argv[:6] == ["virt-install", "--import", "--name", "web1", "--osinfo", "fedora41"]
    assert argv[argv.index("--virt-type") : argv.index("--virt-type") + 2] == ["--virt-type", "kvm"]
    assert "path=/pool/web1-seed.iso,device=cdrom" in argv and "bridge=br0" in argv


def test_tcg_domains_and_default_networks() -> None:
    spec = _spec("tcg", Network.parse("network=default"), ())
    root = ET.fromstring(domain_xml(spec))
    assert root.get("type") == "qemu" and root.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    disk = root.find("./devices/disk[@device='disk']")
    assert disk is not None and [e.tag for e in disk.findall("backingStore")] == ["backingStore"]
    assert root.find("./devices/interface/source").attrib == {"network": "default"}  # type: ignore[union-attr]
    assert "mode=maximum" in virt_install_argv(spec, "qemu:///system")
    none = ET.fromstring(domain_xml(_spec("tcg", Network.parse("none"), ())))
    assert none.find("./devices/interface") is None
    for bad in ("nat", "network=", "bridge=a,b", "user=x", "network=bad/name"):
        with pytest.raises(RecipeError, match="--network"):
            Network.parse(bad)


def test_uris() -> None:
    assert is_system("qemu:///system") and not is_system("qemu:///session")
    assert is_system("qemu+unix:///system?socket=/tmp/s")
    for local in ("qemu:///system", "qemu:///session", "qemu+unix:///system?socket=/tmp/s"):
        assert check_local(local) == local
    for remote in ("qemu+ssh://host/system", "qemu+tcp://127.0.0.1/system", "xen:///system"):
        with pytest.raises(RecipeError, match="local qemu URI"):
            check_local(remote)


def test_bad_options_make_nothing(owner_store: Store, pool: Path, tmp_path: Path) -> None:
    not_iso = tmp_path / "seed.iso"
    not_iso.write_bytes(b"#cloud-config\n")
    for options, match in (
        (ProvisionOptions("bad/name", pool=pool), "--name"),
        (ProvisionOptions("-x", pool=pool), "--name"),
        (ProvisionOptions("vm", memory_mib=32, pool=pool), "at least 64 MiB"),
        (ProvisionOptions("vm", network="nat", pool=pool), "--network"),
        (ProvisionOptions("vm", seed=not_iso, pool=pool), "not an ISO 9660 image"),
        (ProvisionOptions("vm", seed=tmp_path / "gone.iso", pool=pool), "cannot read seed"),
        (ProvisionOptions("vm", connect="qemu+ssh://host/system", pool=pool), "local qemu URI"),
        (ProvisionOptions("vm", pool=tmp_path / "none", print_only=True), "not a directory"),
        (ProvisionOptions("vm", pool=owner_store.root, print_only=True), "inside the store"),
    ):
        with pytest.raises(RecipeError, match=match):
            owner_store.provision(REF, options)
    assert list(pool.iterdir()) == [] and owner_store.roots() == []
    usage = imagekit("provision", REF, store=owner_store)
    assert usage.returncode == 2 and "give REF and --name VM" in usage.stderr
    both = imagekit("provision", REF, "--remove", "vm1", store=owner_store)
    assert both.returncode == 2 and "--remove VM takes no REF" in both.stderr


def test_print_without_a_daemon_uses_the_default_pool(owner_store: Store) -> None:
    report = owner_store.provision(REF, ProvisionOptions("web1", print_only=True))
    pool = Path("/var/lib/libvirt/images") if os.geteuid() == 0 else None
    assert report.defined is False and report.uri is None and report.root is None
    if pool is not None:
        assert report.record.disk == pool / "web1.qcow2"
        assert "network=default" in report.virt_install  # the system instance's network
    assert "--connect" not in report.virt_install
    assert not report.record.disk.exists()


def test_osinfo_guesses_from_the_recipe_name(tmp_path: Path) -> None:
    assert candidates("fedora-server", "41")[:2] == ["fedora-server41", "fedora41"]
    assert candidates("centos-stream", "9")[0] == "centos-stream9"
    assert candidates("debian", None) == ["debian-unknown"]
    database = tmp_path / "os"
    (database / "fedoraproject.org").mkdir(parents=True)
    for version, short_id in (("40", "fedora40"), ("unknown", "fedora-unknown")):
        (database / "fedoraproject.org" / f"fedora-{version}.xml").write_text(
            f'<libosinfo><os id="http://fedoraproject.org/fedora/{version}">'
            f"<short-id>{short_id}</short-id></os></libosinfo>"
        )
    found = lookup("fedora-server", "40", (database,))
    assert found == OsInfo("fedora40", "http://fedoraproject.org/fedora/40")
    newer = lookup("fedora-cloud", "99", (database,))
    assert newer is not None and newer.short_id == "fedora-unknown"
    assert lookup("my-own", "1", (database,)) is None and lookup(None, "1", (database,)) is None
