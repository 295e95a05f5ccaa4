"""sysprep: virt-sysprep's clean-ups, with the same file lists, by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from imagekit.customize.context import Context
from imagekit.customize.spec import ArgKind, OperationSpec, each

LOGFILES = (  # noqa: SIM905 - virt-sysprep's list, kept readable
    "/etc/Pegasus/*.cnf /etc/Pegasus/*.crt /etc/Pegasus/*.csr /etc/Pegasus/*.pem "
    "/etc/Pegasus/*.srl /root/anaconda-ks.cfg /root/anaconda-post.log "
    "/root/initial-setup-ks.cfg /root/install.log /root/install.log.syslog "
    "/root/original-ks.cfg /var/cache/fontconfig/* /var/cache/gdm/* /var/cache/man/* "
    "/var/lib/AccountService/users/* /var/lib/fprint/* /var/lib/logrotate.status "
    "/var/log/*.log* /var/log/BackupPC/LOG /var/log/ConsoleKit/* /var/log/anaconda.syslog "
    "/var/log/anaconda/* /var/log/apache2/*_log /var/log/apache2/*_log-* /var/log/apt/* "
    "/var/log/aptitude* /var/log/audit/* /var/log/btmp* /var/log/ceph/*.log "
    "/var/log/chrony/*.log /var/log/cron* /var/log/cups/*_log* /var/log/debug* "
    "/var/log/dmesg* /var/log/exim4/* /var/log/faillog* /var/log/firewalld* /var/log/gdm/* "
    "/var/log/glusterfs/*glusterd.vol.log /var/log/glusterfs/glusterfs.log /var/log/grubby* "
    "/var/log/httpd/*log /var/log/installer/* /var/log/jetty/jetty-console.log "
    "/var/log/journal/* /var/log/lastlog* /var/log/libvirt/libvirtd.log "
    "/var/log/libvirt/libxl/*.log /var/log/libvirt/lxc/*.log /var/log/libvirt/qemu/*.log "
    "/var/log/libvirt/uml/*.log /var/log/lightdm/* /var/log/mail/* /var/log/maillog* "
    "/var/log/messages* /var/log/ntp /var/log/ntpstats/* /var/log/ppp/connect-errors "
    "/var/log/rhsm/* /var/log/sa/* /var/log/secure* /var/log/setroubleshoot/*.log "
    "/var/log/spooler* /var/log/squid/*.log /var/log/syslog* /var/log/tallylog* "
    "/var/log/tuned/tuned.log /var/log/wtmp* /var/log/xferlog* /var/named/data/named.run"
).split()


def _machine_id(ctx: Context) -> None:
    if ctx.g.is_file("/etc/machine-id"):
        ctx.g.truncate("/etc/machine-id")  # empty, not absent: systemd regenerates it at boot
    ctx.g.rm_f("/var/lib/dbus/machine-id")


def _net_hwaddr(ctx: Context) -> None:
    for path in ctx.g.glob_expand("/etc/sysconfig/network-scripts/ifcfg-*"):
        lines = ctx.read(path).splitlines(keepends=True)
        ctx.write(path, "".join(ln for ln in lines if not ln.lstrip().startswith("HWADDR=")))


def _globs(*patterns: str) -> Callable[[Context], None]:
    return lambda ctx: ctx.delete_globs(list(patterns))


SYSPREP: Mapping[str, tuple[str, Callable[[Context], None]]] = {
    "bash-history": (
        "remove ~/.bash_history of root and /home/*",
        _globs("/root/.bash_history", "/home/*/.bash_history"),
    ),
    "dhcp-client-state": (
        "remove DHCP client leases",
        _globs(
            "/var/lib/dhclient/*",
            "/var/lib/dhcp/*",
            "/var/lib/dhcpcd/*",
            "/var/lib/NetworkManager/*.lease",
            "/var/lib/NetworkManager/dhclient-*",
            "/var/lib/NetworkManager/internal-*",
            "/var/lib/systemd/netif/leases/*",
        ),
    ),
    "logfiles": ("remove the log files virt-sysprep removes", _globs(*LOGFILES)),
    "machine-id": ("empty /etc/machine-id, remove /var/lib/dbus/machine-id", _machine_id),
    "net-hwaddr": ("drop HWADDR= from ifcfg-* files", _net_hwaddr),
    "package-manager-cache": (
        "remove apt, dnf, yum, zypper and apk caches",
        _globs(
            "/var/cache/apt/archives/*",
            "/var/cache/dnf/*",
            "/var/cache/yum/*",
            "/var/cache/zypp*/*",
            "/var/cache/apk/*",
            "/var/cache/libdnf5/*",
        ),
    ),
    "ssh-hostkeys": ("remove /etc/ssh/*_host_* (regenerated at boot)", _globs("/etc/ssh/*_host_*")),
    "tmp-files": ("remove everything in /tmp and /var/tmp", _globs("/tmp/*", "/var/tmp/*")),
}


def _check_sysprep(value: str) -> None:
    if value not in SYSPREP:
        raise ValueError(f"unknown sysprep operation {value!r}; known: {', '.join(SYSPREP)}")


def _apply_sysprep(ctx: Context, name: str) -> None:
    SYSPREP[name][1](ctx)


OPERATIONS = (
    OperationSpec(
        "sysprep",
        ArgKind.CSV,
        "OP,OP..",
        "virt-sysprep clean-ups: " + ", ".join(SYSPREP),
        each(_apply_sysprep),
        check=_check_sysprep,
    ),
)
