"""Every recipe key, once: one table per TOML table with each key's form, default and meaning.

The loader's unknown-key, type and allowed-value checks, the model's defaults, the key reference
in docs/recipes.md (:func:`recipe_reference`) and the JSON Schema (:func:`recipe_json_schema`)
all come from these tables, so none of them can drift from the others. What involves several
keys at once (levels and evidence, resolver needs, templates) is code in the loader.
"""

from __future__ import annotations

from typing import Any

from imagekit.core.refs import NAME_RE
from imagekit.recipe import forms
from imagekit.recipe.table import Key, Table, json_schema, reference
from imagekit.verify.policy import LEVELS

DISK_FORMATS = ("qcow2", "raw")
HTTP_FORMATS = (*DISK_FORMATS, "iso")  # an ISO is fetched only as an installer (kind = "kickstart")
RESOLVERS = ("fedora-releases", "checksum-listing", "debian-json", "ubuntu-sums")
KICKSTART_DELIVERIES = ("oemdrv", "http")
PARTITION_TABLES = {"gpt": "gpt", "mbr": "msdos"}  # recipe name -> libguestfs part_disk's name
FILESYSTEM_LABEL_MAX = {"ext4": 16, "ext3": 16, "ext2": 16, "xfs": 12, "btrfs": 255}
SCRATCH_MIN_SIZE = 32 << 20
VERSION_RE = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
HEX_DIGITS = {"sha256": 64, "sha512": 128}
_FINGERPRINT_RE = r"(?: *[0-9A-Fa-f]){40}(?:(?: *[0-9A-Fa-f]){24})? *"


def _kind(kind: str, default: bool = False) -> Key:
    return Key(
        "kind",
        forms.LINE,
        "the source kind" + (" (the default)" if default else ""),
        default=kind if default else None,
        required=not default,
        choices=(kind,),
    )


def _hex(name: str, digits: int, help_: str) -> Key:
    rule = f"{digits} hex digits"
    return Key(name, forms.LINE, help_, pattern=f"[0-9A-Fa-f]{{{digits}}}", pattern_says=rule)


HTTP = Table(
    "[source]",
    '`[source]` with `kind = "http"`',
    (
        _kind("http", default=True),
        Key("url", forms.LINE, "the image: `https://`, `http://` or `file://`", required=True),
        Key(
            "checksum_url",
            forms.LINE,
            "the checksum file listing the image (BSD `SHA256 (name) = hex` or GNU `hex  name`; "
            "sha256 or sha512)",
        ),
        Key(
            "signature_url",
            forms.LINE,
            "a detached signature of the checksum file (Ubuntu's `SHA256SUMS.gpg`); without it "
            "the checksum file must be clearsigned when keys are pinned",
        ),
        Key(
            "keys",
            forms.WORDS,
            "public key files, relative to the recipe; bundled ones live in `recipes/keys/`",
        ),
        Key(
            "fingerprints",
            forms.FINGERPRINTS,
            "the primary-key fingerprints allowed to sign; a table when the key differs per "
            "release (then `keys` uses `{release}`)",
            pattern=_FINGERPRINT_RE,
            pattern_says="40 or 64 hex digits, spaces allowed",
        ),
        *(_hex(name, n, "pinned digest of the image") for name, n in HEX_DIGITS.items()),
        Key(
            "level",
            forms.LINE,
            "the required verification level; default: `signed` with keys, `pinned` with a "
            "digest, `unverified` with `insecure`",
            choices=tuple(LEVELS),
        ),
        Key(
            "insecure",
            forms.FLAG,
            '`true` accepts the image unverified (the same as `level = "unverified"`)',
            default=False,
        ),
        Key(
            "format",
            forms.LINE,
            'the file\'s format; `"iso"` only as a kickstart installer',
            default="qcow2",
            choices=HTTP_FORMATS,
        ),
        Key(
            "filename",
            forms.LINE,
            "the name the checksum file lists; default: the URL's last component; not allowed "
            "with `[resolve]`",
        ),
        Key(
            "mirror_root",
            forms.LINE,
            "the URL prefix `--mirror` replaces; default: the URL's directory; required with "
            "`[resolve]`, and every URL the recipe reads must start with it",
        ),
        Key(
            "metalink",
            forms.LINE,
            "a metalink (RFC 5854, or MirrorManager's 3.0) listing mirrors of the image: its "
            "`http(s)` URLs for the image's file are read like `mirrors`; its hashes count for "
            "nothing (the checksum file decides)",
        ),
        Key(
            "mirrors",
            forms.WORDS,
            "more roots publishing the same tree as `mirror_root`: the image's bytes may also "
            "come from them (several Range connections, one sha256 over the file); the "
            "checksum file and signature do not, and the checksum stays what the bytes must match",
        ),
    ),
    kind="http",
)

_LABELS = ", ".join(
    f"{n} for {' and '.join(fs for fs, m in FILESYSTEM_LABEL_MAX.items() if m == n)}"
    for n in dict.fromkeys(FILESYSTEM_LABEL_MAX.values())
)
SCRATCH = Table(
    "[source]",
    '`[source]` with `kind = "scratch"`: a fresh disk filled from a local tree, no network',
    (
        _kind("scratch"),
        Key(
            "content",
            forms.LINE,
            "a directory or a `.tar`, `.tar.gz`, `.tgz`, `.tar.xz` or `.tar.bz2` file, relative "
            "to the recipe; unpacked with numeric owners, modes and links",
            required=True,
        ),
        Key("size", forms.SIZE, "the disk's size", default="1G", minimum=SCRATCH_MIN_SIZE),
        Key(
            "partition_table",
            forms.LINE,
            "one partition spans the disk",
            default="gpt",
            choices=tuple(PARTITION_TABLES),
        ),
        Key(
            "filesystem",
            forms.LINE,
            "the partition's filesystem",
            default="ext4",
            choices=tuple(FILESYSTEM_LABEL_MAX),
        ),
        Key(
            "label",
            forms.LINE,
            f"the filesystem label, used as `LABEL=` in `/etc/fstab` when the content has none; "
            f"at most {_LABELS} characters",
            default="root",
            pattern="[A-Za-z0-9_-]+",
            pattern_says="letters, digits, '_' or '-'",
        ),
        Key("format", forms.LINE, "the disk's format", default="qcow2", choices=DISK_FORMATS),
    ),
    kind="scratch",
)

BASE = Table(
    "[source]",
    '`[source]` with `kind = "recipe"`: another recipe\'s image as the base',
    (
        _kind("recipe"),
        Key(
            "recipe",
            forms.LINE,
            "a recipe file (relative to this one) or a bundled `NAME[:VERSION]`",
            required=True,
        ),
    ),
    kind="recipe",
)

INSTALLER = Table(
    "installer",
    "`installer` of a kickstart source: set exactly one of `recipe` and `path`",
    (
        Key(
            "recipe",
            forms.LINE,
            "the installer ISO's recipe, pulled and verified like any image; may use `{name}`, "
            "`{version}`, `{arch}`",
        ),
        Key("path", forms.LINE, "a local installer ISO, relative to the recipe"),
        _hex("sha256", 64, "the local ISO's sha256 (required with `path`)"),
    ),
    example='{ recipe = "NAME:VERSION" } or { path = "local.iso", sha256 = "..." }',
)

DISK = Table(
    "disk",
    "`disk` of a kickstart source: the disk the installer writes",
    (
        Key("size", forms.SIZE, "the disk's size", default="20G"),
        Key("format", forms.LINE, "the disk's format", default="qcow2", choices=DISK_FORMATS),
    ),
    example='{ size = "20G", format = "qcow2" }',
)

KICKSTART = Table(
    "[source]",
    '`[source]` with `kind = "kickstart"`: an installer run with a kickstart (docs/kickstart.md)',
    (
        _kind("kickstart"),
        Key("installer", forms.TABLE, "the installer ISO", required=True, tables=(INSTALLER,)),
        Key("kickstart", forms.LINE, "the kickstart file, relative to the recipe", required=True),
        Key("disk", forms.TABLE, "the installed disk", default={}, tables=(DISK,)),
        Key("memory", forms.SIZE, "the VM's memory", default="2G"),
        Key("vcpus", forms.COUNT, "the VM's CPUs", default=2, minimum=1, maximum=64),
        Key("timeout", forms.DURATION, "hard limit for the whole install", default="60m"),
        Key(
            "inactivity",
            forms.DURATION,
            "no console output and no disk writes for this long means the install is stuck",
            default="10m",
        ),
        Key(
            "delivery",
            forms.LINE,
            "how the installer gets the kickstart: an `OEMDRV` CD-ROM or a loopback HTTP server",
            default="oemdrv",
            choices=KICKSTART_DELIVERIES,
        ),
        Key(
            "kernel_args",
            forms.WORDS,
            "appended to the installer's kernel command line",
            pattern="\\S+",
            pattern_says="a word without spaces",
        ),
        Key(
            "syntax",
            forms.LINE,
            "the pykickstart handler (`F41`, `RHEL9`); default: `F<version>`, else the newest",
        ),
        Key("compress", forms.FLAG, "compress the stored qcow2 (smaller, slower)", default=False),
        Key("force", forms.FLAG, "boot a kickstart that would wait for a person", default=False),
    ),
    kind="kickstart",
)

RESOLVE = Table(
    "[resolve]",
    "`[resolve]`: the version is resolved from upstream metadata (http sources only)",
    (
        Key(
            "resolver",
            forms.LINE,
            "how upstream is read (Resolvers)",
            required=True,
            choices=RESOLVERS,
        ),
        Key(
            "image",
            forms.WORDS,
            "regex (or regexes, first match wins) for the image's file name, matched whole; "
            "`(?P<compose>...)` captures the compose id",
            required=True,
        ),
        Key(
            "metadata_url",
            forms.LINE,
            "`fedora-releases`: Fedora's releases.json; `debian-json`: the build JSON; "
            "`ubuntu-sums`: the moving `release/SHA256SUMS`",
        ),
        Key(
            "releases_url",
            forms.LINE,
            "`fedora-releases`: the listing of `releases/`, read behind a mirror",
        ),
        Key(
            "compose",
            forms.LINE,
            "`ubuntu-sums`: regex for the checksum line that carries the serial, with a "
            "`compose` group",
        ),
        Key(
            "arches",
            forms.STRING_TABLE,
            "our arch -> upstream's name; the arches the recipe supports",
        ),
        Key(
            "releases",
            forms.RELEASES,
            "the releases the recipe knows, with their template variables (each one used)",
        ),
    ),
)

CLOUD_INIT = Table(
    "cloud_init",
    "`cloud_init` of `[test]`: a NoCloud seed made for the boot, as `imagekit seed` makes one",
    (
        Key("hostname", forms.LINE, "the guest's host name"),
        Key("user", forms.LINE, "a user created with `ssh_keys` and passwordless sudo"),
        Key("ssh_keys", forms.WORDS, "public key files to authorize, relative to the recipe"),
        Key(
            "packages", forms.WORDS, "packages installed at first boot (needs the guest's network)"
        ),
        Key("runcmd", forms.WORDS, "commands run once, at the end of first boot"),
        Key(
            "user_data",
            forms.LINE,
            "a `#cloud-config` of yours, relative to the recipe; the keys above extend it",
        ),
        Key(
            "network_config",
            forms.LINE,
            "a cloud-init network-config (version 1 or 2), relative to the recipe",
        ),
    ),
    example='{ hostname = "web1", user = "alice", ssh_keys = ["id.pub"] }',
)

TEST = Table(
    "[test]",
    "`[test]`: boot the built image once its last layer is built (docs/vm.md)",
    (
        Key(
            "boot",
            forms.FLAG,
            "boot the image on a throwaway overlay; `false` keeps the block and boots nothing",
            default=True,
        ),
        Key(
            "marker",
            forms.LINE,
            "console text that means ready; default: cloud-init's `Cloud-init v. ... finished` "
            "line or a login prompt",
        ),
        Key("timeout", forms.DURATION, "the guest must be ready within this", default="5m"),
        Key(
            "inactivity",
            forms.DURATION,
            "console and disk both idle this long fails the boot (not watched with `ssh`)",
            default="2m",
        ),
        Key("ssh", forms.LINE, "ready when this command exits 0 over SSH, instead of a marker"),
        Key("ssh_user", forms.LINE, "the user `ssh` logs in as"),
        Key(
            "identity",
            forms.LINE,
            "the private key `ssh` uses, relative to the recipe; default: one made for the boot",
        ),
        Key("memory", forms.SIZE, "the VM's memory", default="1G", minimum=64 << 20),
        Key("vcpus", forms.COUNT, "the VM's CPUs", default=1, minimum=1, maximum=64),
        Key(
            "seed",
            forms.LINE,
            "a NoCloud seed ISO attached as a CD-ROM, relative to the recipe; not with "
            "`cloud_init`",
        ),
        Key(
            "seedless",
            forms.FLAG,
            "serve the `cloud_init` seed over HTTP (SMBIOS serial) instead of a CD-ROM",
            default=False,
        ),
        Key("cloud_init", forms.TABLE, "a seed made for the boot", tables=(CLOUD_INIT,)),
    ),
)

CHECK = Table(
    "[check]",
    "`[check]`: compare the built image with a profile of its edition (docs/vm.md)",
    (
        Key(
            "profile",
            forms.LINE,
            "a profile name (`recipes/profiles/NAME.toml`) or a `.toml` file relative to the "
            "recipe",
            required=True,
        ),
        Key(
            "required",
            forms.FLAG,
            "`true`: a failed required check of the profile fails the build; `false`: the "
            "report is recorded and the build goes on",
            default=True,
        ),
    ),
)

RECIPE = Table(
    "",
    "Top level",
    (
        Key(
            "name",
            forms.LINE,
            "the image name: the ref is `NAME:VERSION`",
            required=True,
            pattern=NAME_RE,
            pattern_says="lowercase letters, digits, '.', '_' or '-', first a letter or digit",
        ),
        Key(
            "version",
            forms.LINE,
            "the default version; `NAME:VERSION` on the command line overrides it",
            required=True,
            pattern=VERSION_RE,
            pattern_says="1 to 128 letters, digits, '.', '_' or '-', not first '.' or '-'",
        ),
        Key(
            "arch",
            forms.LINE,
            "the architecture (`x86_64`, `aarch64`); default: the host's; `--arch` overrides it",
            pattern="[a-z0-9_]+",
            pattern_says="lowercase letters, digits or '_'",
        ),
        Key("description", forms.LINE, "one line for `imagekit recipes`"),
        Key(
            "source",
            forms.TABLE,
            "where the image comes from; `kind` picks the table",
            required=True,
            tables=(HTTP, SCRATCH, BASE, KICKSTART),
        ),
        Key("resolve", forms.TABLE, "resolve the version upstream", tables=(RESOLVE,)),
        Key("customize", forms.STEPS, "build steps, one cached layer each (docs/customize.md)"),
        Key("test", forms.TABLE, "boot the built image before it is tagged", tables=(TEST,)),
        Key(
            "check",
            forms.TABLE,
            "compare the built image with its edition before it is tagged",
            tables=(CHECK,),
        ),
    ),
)


def recipe_reference() -> str:
    """The key tables as Markdown; docs/recipes.md embeds it and a test keeps them equal."""
    return reference(RECIPE)


def recipe_json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of recipe files, for editors and other tools.

    It says what the key tables say; what needs the files or several keys at once (paths that
    exist, levels that the evidence can reach, templates) only the loader checks.
    """
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "imagekit recipe",
        **json_schema(RECIPE),
    }
