"""The top-level keys cloud-init accepts in a #cloud-config document, as data.

Copied from the root ``properties`` of cloud-init's own JSON schema, which it validates
user-data against with ``additionalProperties: false``:
https://github.com/canonical/cloud-init/blob/01a3bf28749fbb1604f57d9515bcb86dd9f01192/cloudinit/config/schemas/schema-cloud-config-v1.json
(also printed by ``cloud-init schema --docs all``). A key outside this list is one cloud-init
ignores with a warning, which in a seed is almost always a typo that silently does nothing.
Update the list (and the commit above) when cloud-init adds a module.
"""

from __future__ import annotations

SCHEMA_COMMIT = "01a3bf28749fbb1604f57d9515bcb86dd9f01192"
SCHEMA_SOURCE = f"cloud-init schema-cloud-config-v1.json at {SCHEMA_COMMIT}"

_KEYS = """
    allow_public_ssh_keys ansible apk_repos apt apt_pipelining apt_reboot_if_required
    apt_update apt_upgrade authkey_hash autoinstall bootcmd byobu_by_default ca-certs
    ca_certs chef chpasswd cloud_config_modules cloud_final_modules cloud_init_modules
    create_hostname_file device_aliases disable_ec2_metadata disable_piwiz disable_root
    disable_root_opts disk_setup drivers enable_rpi_connect fan final_message fqdn fs_setup
    groups growpart grub-dpkg grub_dpkg hostname keyboard landscape launch-index locale
    locale_configfile lxd manage_etc_hosts manage_resolv_conf mcollective merge_how
    merge_type migrate mount_default_fields mounts no_ssh_fingerprints ntp output
    package_reboot_if_required package_update package_upgrade packages password phone_home
    power_state prefer_fqdn_over_hostname preserve_hostname puppet random_seed reporting
    resize_rootfs resolv_conf rh_subscription rpi_interfaces rpi_userconf rsyslog runcmd
    salt_minion snap spacewalk ssh ssh_authorized_keys ssh_deletekeys
    ssh_fp_console_blacklist ssh_genkeytypes ssh_import_id ssh_key_console_blacklist
    ssh_keys ssh_publish_hostkeys ssh_pwauth ssh_quiet_keygen swap system_info timezone
    ubuntu_advantage ubuntu_pro updates user users vendor_data version wireguard write_files
    yum_repo_dir yum_repos zypper
"""
TOP_LEVEL_KEYS = frozenset(_KEYS.split())
