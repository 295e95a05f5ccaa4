"""NoCloud seeds: read back with pycdlib and isoinfo, rebuilt byte for byte, checked for errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pycdlib
import pytest
import yaml

from imagekit.boot import SeedSpec, make_nocloud_seed
from imagekit.boot.cloudconfig import render
from imagekit.boot.seed import serve_seed, smbios_serial
from imagekit.errors import RecipeError
from imagekit.store import Store

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEAt7XcxxgGS7eCZU2odXWjlWFj1nF1Q7OAHa3If34sA me@host"


@pytest.fixture
def public_key(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519.pub"
    path.write_text(KEY + "\n")
    return path


def read_rr(iso: Path, name: str) -> str:
    image = pycdlib.PyCdlib()
    image.open(str(iso))
    try:
        out = io.BytesIO()
        image.get_file_from_iso_fp(out, rr_path=f"/{name}")
        return out.getvalue().decode()
    finally:
        image.close()


def isoinfo(*args: str) -> str:
    return subprocess.run(["isoinfo", *args], capture_output=True, text=True, check=True).stdout


def test_seed_reads_back_with_pycdlib_and_isoinfo(tmp_path: Path, public_key: Path) -> None:
    spec = SeedSpec(
        hostname="web1", user="alice", ssh_keys=(public_key,), packages=("nginx",), runcmd=("true",)
    )
    report = make_nocloud_seed(tmp_path / "seed.iso", spec)
    iso = report.path

    image = pycdlib.PyCdlib()
    image.open(str(iso))
    assert image.pvd.volume_identifier.decode().strip() == "cidata"
    assert image.has_rock_ridge() and image.has_joliet()
    names = {child.rock_ridge.name().decode() for child in image.list_children(rr_path="/")}
    image.close()
    assert {"meta-data", "user-data"} <= names and not names & {"network-config", "vendor-data"}

    meta = yaml.safe_load(read_rr(iso, "meta-data"))
    assert meta == {"instance-id": report.instance_id, "local-hostname": "web1"}
    user_data = read_rr(iso, "user-data")
    assert user_data.startswith("#cloud-config\n")
    document = yaml.safe_load(user_data)
    assert document["users"][0] == "default"
    assert document["users"][1]["name"] == "alice"
    assert document["users"][1]["ssh_authorized_keys"] == [KEY]
    assert document["packages"] == ["nginx"] and document["runcmd"] == ["true"]

    assert "Volume id: cidata" in isoinfo("-d", "-i", str(iso))
    listing = isoinfo("-R", "-l", "-i", str(iso))
    assert " meta-data" in listing and " user-data" in listing
    assert f"instance-id: {report.instance_id}" in isoinfo("-R", "-x", "/meta-data", "-i", str(iso))
    assert isoinfo("-J", "-x", "/user-data", "-i", str(iso)) == user_data  # Joliet names too
    assert report.files == ("meta-data", "user-data")
    assert report.size == iso.stat().st_size


def test_same_inputs_give_the_same_bytes_in_any_time_zone(tmp_path: Path, public_key: Path) -> None:
    spec = SeedSpec(hostname="h", ssh_keys=(public_key,), runcmd=("echo hi",))
    first = make_nocloud_seed(tmp_path / "a.iso", spec)
    second = make_nocloud_seed(tmp_path / "b.iso", spec)
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.digest == second.digest

    # Another process, another zone and another day: pycdlib's dates are pinned in UTC.
    code = (
        "import sys; from pathlib import Path; from imagekit.boot import SeedSpec, "
        "make_nocloud_seed as m; print(m(Path(sys.argv[1]), SeedSpec(hostname='h', "
        "ssh_keys=(Path(sys.argv[2]),), runcmd=('echo hi',))).digest)"
    )
    env = {**os.environ, "TZ": "Pacific/Kiritimati"}
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c.iso"), str(public_key)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert other.stdout.strip() == first.digest
    assert (tmp_path / "c.iso").read_bytes() == first.path.read_bytes()

    changed = make_nocloud_seed(tmp_path / "d.iso", SeedSpec(hostname="h2"))
    assert changed.instance_id != first.instance_id  # a new seed is a new instance


def test_a_users_cloud_config_is_kept_verbatim_or_extended(tmp_path: Path) -> None:
    mine = tmp_path / "user-data"
    text = "#cloud-config\n# my comment stays\npackages: [vim]\nusers:\n  - name: bob\n"
    mine.write_text(text)
    assert render(SeedSpec(user_data=mine)).files["user-data"].decode() == text

    extended = render(SeedSpec(user_data=mine, packages=("curl",), user="carol"))
    document = yaml.safe_load(extended.files["user-data"])
    assert document["packages"] == ["vim", "curl"]
    assert [u if isinstance(u, str) else u["name"] for u in document["users"]] == ["bob", "carol"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("#cloud-config\npackages:\n  - vim\n - curl\n", r"line 4: invalid YAML"),
        ("#cloud-config\nruncmd: [a, b\n", r"line 3: invalid YAML"),
        # composes, but a list as a mapping key cannot be constructed (found by the fuzz target)
        ("#cloud-config\nruncmd:\n  - [touch, /x]:\n", r"line 3: invalid YAML: found unhashable"),
        ("#cloud-config\npackages: [vim]\npackges: [curl]\n", r"line 3: 'packges' .*'packages'"),
        ("#cloud-config\nhostname: a\nhostname: b\n", r"line 3: 'hostname' is given twice"),
        ("#cloud-config\n- a list\n", r"line 2: a cloud-config is a mapping"),
        ("#!/bin/sh\necho hi\n", r"line 1: user-data must start with '#cloud-config'"),
    ],
)
def test_bad_user_data_is_refused_with_its_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=match) as caught:
        make_nocloud_seed(tmp_path / "seed.iso", SeedSpec(user_data=path))
    assert str(path) in str(caught.value)
    assert not (tmp_path / "seed.iso").exists()


def test_keys_names_and_network_config_are_checked(tmp_path: Path, public_key: Path) -> None:
    private = tmp_path / "id_ed25519"
    private.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    with pytest.raises(RecipeError, match="private key; give its public half"):
        render(SeedSpec(ssh_keys=(private,)))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    with pytest.raises(RecipeError, match="key 1 is not an OpenSSH public key"):
        render(SeedSpec(ssh_keys=(garbage,)))
    with pytest.raises(RecipeError, match="not a valid host name"):
        render(SeedSpec(hostname="bad_name!"))
    with pytest.raises(RecipeError, match="not a portable user name"):
        render(SeedSpec(user="Root User"))

    network = tmp_path / "network-config"
    network.write_text("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n")
    seed = render(SeedSpec(network_config=network, instance_id="my-vm-1"))
    assert seed.files["network-config"] == network.read_bytes()
    assert seed.instance_id == "my-vm-1"
    network.write_text("ethernets: {}\n")
    with pytest.raises(RecipeError, match="'version: 1' or 'version: 2'"):
        render(SeedSpec(network_config=network))


def test_keys_without_a_user_go_to_the_default_user(public_key: Path) -> None:
    document = yaml.safe_load(render(SeedSpec(ssh_keys=(public_key,))).files["user-data"])
    assert document == {"ssh_authorized_keys": [KEY]}


def test_seedless_server_serves_the_seed_on_loopback() -> None:
    seed = render(SeedSpec(hostname="net1"))
    with serve_seed(seed) as port:
        serial = smbios_serial(port)
        assert serial == f"ds=nocloud;s=http://10.0.2.2:{port}/"
        base = f"http://127.0.0.1:{port}/"
        for name in ("meta-data", "user-data"):
            with urllib.request.urlopen(base + name) as response:
                assert response.read() == seed.files[name]
        with urllib.request.urlopen(base + "vendor-data") as response:
            assert response.read() == b""
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "etc/shadow")
        assert missing.value.code == 404


def test_cli_seed_json_and_errors(tmp_path: Path, public_key: Path) -> None:
    def imagekit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imagekit", *args], capture_output=True, text=True, timeout=60
        )

    out = tmp_path / "seed.iso"
    options = ["--hostname", "h1", "--user", "ops", "--ssh-key", str(public_key)]
    made = imagekit(
        "seed", "-o", str(out), *options, "--package", "vim", "--runcmd", "true", "--json"
    )
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert report["path"] == str(out) and report["label"] == "cidata"
    assert report["instance_id"].startswith("iid-") and report["files"] == [
        "meta-data",
        "user-data",
    ]
    assert KEY not in made.stdout  # the report names files, never their content
    assert (
        Store.seed(tmp_path / "again.iso", SeedSpec(hostname="h1")).instance_id
        != report["instance_id"]
    )

    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nwrite_file: []\n")
    failed = imagekit("seed", "-o", str(tmp_path / "x.iso"), "--user-data", str(bad))
    assert failed.returncode == 2
    assert failed.stderr.startswith("imagekit: error: ") and "line 2" in failed.stderr
    assert "'write_files'" in failed.stderr
