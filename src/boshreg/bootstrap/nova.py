"""What Nova (and EC2) do with user data, as named facts: every other module imports them from here.

A config drive's label, its paths, the metadata service's versions and paths, the size limits and the
microversion that removed injected files are facts about the cloud, not choices of ours; each one is
written down once, so a tool that judges a VM and a tool that builds one cannot disagree about them.
"""

from __future__ import annotations

# --- the config drive ------------------------------------------------------------------------------
CONFIG_DRIVE_LABEL = "config-2"  # ISO 9660 volume label, as `genisoimage -V config-2 -r -J` writes it
# Where udev links a drive by its label; the stemcell's agent.json lists both spellings.
CONFIG_DRIVE_DISK_PATHS = ("/dev/disk/by-label/CONFIG-2", "/dev/disk/by-label/config-2")
# The EC2 layout on a drive: what the stemcell's ConfigDrive source reads.
DRIVE_EC2_USER_DATA = "ec2/latest/user-data"
DRIVE_EC2_META_DATA = "ec2/latest/meta-data.json"
# The OpenStack layout on a drive (and, below /openstack, on the metadata service).
DRIVE_OPENSTACK_USER_DATA = "openstack/latest/user_data"
DRIVE_OPENSTACK_META_DATA = "openstack/latest/meta_data.json"
DRIVE_CONTENT_DIR = "openstack/content"  # injected (personality) files: 0000, 0001, ... listed in meta_data "files"

# --- the metadata service ----------------------------------------------------------------------------
METADATA_URL = "http://169.254.169.254"  # link-local: never contacted from a test machine
METADATA_URL_V6 = "http://[fe80::a9fe:a9fe]"
EC2_USER_DATA_PATH = "/latest/user-data"
EC2_INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
EC2_SSH_KEY_PATH = "/latest/meta-data/public-keys/0/openssh-key"

# Every version Nova lists under /openstack, oldest first; every one is served, and readers such as
# cloud-init take the newest they know from the list.
OPENSTACK_VERSIONS = (
    "2012-08-10",  # Folsom: meta_data.json, user_data
    "2013-04-04",  # Grizzly
    "2013-10-17",  # Havana
    "2015-10-15",  # Liberty: network_data.json
    "2016-06-30",  # Newton: device tags ("devices" in meta_data.json)
    "2016-10-06",  # Newton: vendor_data2.json
    "2017-02-22",  # Ocata: "project_id" in meta_data.json
    "2018-08-27",  # Rocky
    "2020-10-14",  # Victoria
    "2025-04-04",  # the newest Nova lists
    "latest",
)
EC2_VERSIONS = (
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
    "2008-02-01", "2008-09-01", "2009-04-04", "latest",
)  # fmt: skip

# --- the stemcell's side ----------------------------------------------------------------------------
AGENT_JSON_PATH = "/var/vcap/bosh/agent.json"  # the agent's sources, in order (Infrastructure.Settings)
BOOTSTRAP_SETTINGS_PATH = "/var/vcap/bosh/agent-bootstrap-env.json"  # the OpenStack stemcell's File source

# The Infrastructure.Settings of the current OpenStack stemcell's agent.json (bosh-linux-stemcell-builder,
# stage bosh_openstack_agent_settings): the order in which its agent looks for user data.
OPENSTACK_STEMCELL_SETTINGS: dict[str, object] = {
    "Sources": [
        {"Type": "File", "SettingsPath": BOOTSTRAP_SETTINGS_PATH},
        {
            "Type": "ConfigDrive",
            "DiskPaths": list(CONFIG_DRIVE_DISK_PATHS),
            "MetaDataPath": DRIVE_EC2_META_DATA,
            "UserDataPath": DRIVE_EC2_USER_DATA,
        },
        {
            "Type": "HTTP",
            "URI": METADATA_URL,
            "UserDataPath": EC2_USER_DATA_PATH,
            "InstanceIDPath": EC2_INSTANCE_ID_PATH,
            "SSHKeysPath": EC2_SSH_KEY_PATH,
        },
    ],
    "UseServerName": True,
    "UseRegistry": True,
}

# --- injected files and the compute API -----------------------------------------------------------
PERSONALITY_PATH = "/var/vcap/bosh/user_data.json"  # where the old CPI injected the user data
PERSONALITY_REMOVED_MICROVERSION = "2.57"  # compute API: personality refused with 400 from here on

# --- size limits -----------------------------------------------------------------------------------
NOVA_MAX_BASE64 = 65_535  # nova refuses user_data longer than this once base64-encoded
NOVA_MAX_RAW = NOVA_MAX_BASE64 // 4 * 3  # 49,149 raw bytes
EC2_MAX_RAW = 16 * 1024  # EC2 accepts 16 KiB of user data before encoding

CLOUDS = ("openstack", "aws")


def max_user_data(cloud: str) -> tuple[int, str]:
    """The largest raw user data ``cloud`` accepts, and how its API says the limit."""
    if cloud == "aws":
        return EC2_MAX_RAW, f"EC2 accepts at most {EC2_MAX_RAW:,} bytes of user data before encoding"
    return NOVA_MAX_RAW, f"nova accepts at most {NOVA_MAX_RAW:,} bytes ({NOVA_MAX_BASE64:,} once base64-encoded)"
