# SPDX-License-Identifier: Apache-2.0
"""The Ansible roles applied for real (root): site.yml to a Debian 12 root.

site.yml is applied to a Debian 12 root (debootstrap), reached through
community.general's chroot connection, with ``voxrelay_activate=false`` (no
systemd runs in a chroot). Then: packages and files are there, the config file
loads with voxrelay's own loader and holds the variables given, the unit files
pass ``systemd-analyze verify``, the sysctls and the nftables ruleset load in a
network namespace made for the test (where the ruleset is also shown to pass
the relay port and drop another), and a second run changes nothing. The root
is removed afterwards, mounts included. Lint, syntax and variable checks are in
tests/unit/test_ansible.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.ansible_run import ANSIBLE_DIR, BIN, ROLE_TABLES, ROOT, ansible_env, ansible_tool
from tests.bpf.debian_chroot import DebianChroot, community_general_collection, run
from voxrelay import config as cfg

PUBLIC_IF = "vxpub0"
PRIVATE_IF = "vxpriv0"

# Every value differs from its default, so the rendered config proves it came
# from these variables.
APPLY_VARS: dict[str, object] = {
    "voxrelay_activate": False,
    "relay_name": "ci",
    "relay_public_interface": PUBLIC_IF,
    "relay_private_interface": PRIVATE_IF,
    "relay_public_address": "198.18.0.1",
    "relay_private_address": "198.18.1.1",
    "relay_public_port": 3479,
    "relay_port_min": 40000,
    "relay_port_max": 40999,
    "relay_xdp_mode": "generic",
    "relay_new_flows_per_sec": 20,
    "relay_max_flows_per_token": 4,
    "relay_flow_idle_seconds": 90,
    "relay_public_tcp_ports": [2222],
    "orchestrator_directory": "redis://127.0.0.1:6380/0",
    "orchestrator_listen": "198.18.1.1:7480",
    "orchestrator_metrics_listen": "198.18.1.1:9478",
    "orchestrator_heartbeat_grace_seconds": 5.5,
    "transceiver_id": 7,
    "transceiver_listen": "0.0.0.0:8443",
    "transceiver_private_address": "198.18.1.7",
    "transceiver_relays": ["198.18.0.1:3479", "198.18.0.2:3479"],
    "transceiver_directory": "redis://127.0.0.1:6380/0",
    "transceiver_model": "198.18.1.21:50051",
    "transceiver_max_calls": 12,
    "transceiver_api_token": 'tok"en\\with quotes',
    "model_listen": "198.18.1.21:50051",
    "model_reply": "echo",
    "directory_bind": "127.0.0.1 198.18.1.5",
    "directory_port": 6380,
    # The ICE-TCP front, on the TCP port the relay admits above.
    "tcpfront_enabled": True,
    "tcpfront_port": 2222,
    "tcpfront_workers": 2,
    "tcpfront_max_connections": 500,
    "tcpfront_stats_file": "/run/voxrelay/ci-front.stats",
}

UNITS = [
    "voxrelay-relay.service",
    "voxrelay-firewall.service",
    "voxrelay-orchestrator.service",
    "voxrelay-transceiver.service",
    "voxrelay-model.service",
    "voxrelay-tcpfront.service",
]


@dataclasses.dataclass
class Applied:
    chroot: DebianChroot
    runs: list[subprocess.CompletedProcess[str]]


def _recap(output: str) -> dict[str, int]:
    m = re.search(r"^target\s*:\s*(.*)$", output, re.MULTILINE)
    assert m, "no PLAY RECAP line for target:\n" + output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def _changed_tasks(output: str) -> list[str]:
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line
        elif line.startswith("changed:"):
            changed.append(task)
    return changed


def _build_wheel(tmp: Path) -> Path:
    """The voxrelay wheel from this tree (its dependencies come from PyPI)."""
    dist = tmp / "dist"
    run([str(BIN / "pip"), "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], timeout=600)
    (wheel,) = dist.glob("voxrelay-*.whl")
    return wheel


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    import shutil

    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed; scripts/setup.sh installs it")

    tmp = tmp_path_factory.mktemp("ansible-apply")
    wheel = _build_wheel(tmp)
    collections = community_general_collection()
    chroot = DebianChroot.create()
    try:
        inventory = {
            "all": {
                "children": {g: {"hosts": {"target": None}}
                             for g in ("relays", "transceivers", "models", "directory")},
                "vars": {
                    "ansible_connection": "community.general.chroot",
                    "ansible_host": str(chroot.root),
                    "ansible_python_interpreter": "/usr/bin/python3",
                    # No sudo in the root, and none needed: the chroot runs as root.
                    "ansible_become": False,
                    "voxrelay_wheel": str(wheel),
                    **APPLY_VARS,
                },
            }
        }
        inv_path = tmp / "inventory.json"
        inv_path.write_text(json.dumps(inventory))
        env = ansible_env(ANSIBLE_COLLECTIONS_PATH=str(collections))
        runs = []
        artifacts = ROOT / "artifacts"
        artifacts.mkdir(exist_ok=True)
        for n in (1, 2):
            proc = subprocess.run(
                [ansible_tool("ansible-playbook"), "-i", str(inv_path), "site.yml"],
                cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=1500, check=False)
            (artifacts / f"ansible-apply-{n}.log").write_text(proc.stdout + proc.stderr)
            assert proc.returncode == 0, (
                f"apply {n} failed (artifacts/ansible-apply-{n}.log):\n"
                + proc.stdout[-6000:] + proc.stderr[-2000:]
            )
            runs.append(proc)
        yield Applied(chroot, runs)
    finally:
        chroot.close()
    assert not chroot.root.exists()



@pytest.mark.root
@pytest.mark.timeout(1800)
def test_second_apply_changes_nothing(applied):
    first, second = (_recap(r.stdout) for r in applied.runs)
    assert first["failed"] == 0 and first["changed"] > 0
    assert second["failed"] == 0 and second["unreachable"] == 0
    assert second["changed"] == 0, _changed_tasks(applied.runs[1].stdout)


@pytest.mark.root
@pytest.mark.timeout(1800)
def test_packages_and_files_are_installed(applied):
    ch = applied.chroot
    for pkg in ("python3-bpfcc", "linux-headers-amd64", "nftables", "bpftool", "python3-venv",
                "redis-server", "espeak-ng"):
        out = ch.run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
        assert out.stdout == "install ok installed", (pkg, out.stdout, out.stderr)
    version = ch.run(["/opt/voxrelay/bin/voxrelay", "--version"]).stdout
    assert "0.1.0" in version
    # Debian's bcc, importable from the venv.
    ch.run(["/opt/voxrelay/bin/python", "-c", "import bcc"])
    # The running kernel's build tree points at a Debian header tree that exists.
    krel = subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
    build = ch.resolve(f"/lib/modules/{krel}/build")
    assert (build / "Makefile").exists() or (build / "include").is_dir(), build
    source = ch.resolve(f"/lib/modules/{krel}/source")
    assert source.name.endswith("-common") and source.is_dir(), source
    # The voxrelay account runs the transceiver and the model.
    assert "voxrelay:" in ch.path("/etc/passwd").read_text()


@pytest.mark.root
@pytest.mark.timeout(1800)
def test_config_is_rendered_from_variables_and_loads(applied):
    ch = applied.chroot
    path = ch.path("/etc/voxrelay/voxrelay.toml")
    loaded = cfg.load_config(path)
    for table, (_, prefix) in ROLE_TABLES.items():
        section = getattr(loaded, table)
        for f in dataclasses.fields(section):
            var = prefix + f.name
            if var in APPLY_VARS:
                assert getattr(section, f.name) == APPLY_VARS[var], (table, f.name)
    # It holds the API token: root and the voxrelay group only.
    st = path.stat()
    assert oct(st.st_mode & 0o777) == "0o640"
    redis_conf = ch.path("/etc/redis/redis.conf").read_text()
    assert re.search(r"^bind 127\.0\.0\.1 198\.18\.1\.5$", redis_conf, re.MULTILINE)
    assert re.search(r"^port 6380$", redis_conf, re.MULTILINE)


@pytest.mark.root
@pytest.mark.timeout(1800)
def test_unit_files_are_valid_and_enabled(applied):
    ch = applied.chroot
    for unit in UNITS:
        unit_path = f"/etc/systemd/system/{unit}"
        assert ch.path(unit_path).exists(), unit
        verify = ch.run(["systemd-analyze", "verify", unit_path], check=False)
        assert verify.returncode == 0, (unit, verify.stdout, verify.stderr)
    wants = ch.path("/etc/systemd/system/multi-user.target.wants")
    for unit in ("voxrelay-relay.service", "voxrelay-orchestrator.service",
                 "voxrelay-transceiver.service", "voxrelay-model.service",
                 "voxrelay-tcpfront.service", "redis-server.service"):
        assert (wants / unit).is_symlink(), unit
    assert ch.path("/etc/systemd/system/sysinit.target.wants/voxrelay-firewall.service").is_symlink()
    relay = ch.path("/etc/systemd/system/voxrelay-relay.service").read_text()
    assert ("ExecReload=/opt/voxrelay/bin/voxrelay relay load --replace "
            "--config /etc/voxrelay/voxrelay.toml") in relay


@pytest.fixture
def relay_netns():
    """A namespace named like nothing else, with the relay's two interface names."""
    name = f"vxans-{uuid.uuid4().hex[:8]}"
    peer = f"vxcli-{uuid.uuid4().hex[:8]}"
    created: list[str] = []
    try:
        for ns in (name, peer):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            created.append(ns)
        sh = lambda ns, *a: subprocess.run(["ip", "-n", ns, *a], check=True)
        # public: relay <-> client; private: a veth whose peer stays in the relay ns.
        sh(name, "link", "add", PUBLIC_IF, "type", "veth", "peer", "name", "cli0", "netns", peer)
        sh(name, "link", "add", PRIVATE_IF, "type", "veth", "peer", "name", "vxprivp")
        sh(name, "addr", "add", "198.18.0.1/30", "dev", PUBLIC_IF)
        sh(peer, "addr", "add", "198.18.0.2/30", "dev", "cli0")
        for ns, link in ((name, PUBLIC_IF), (name, PRIVATE_IF), (name, "vxprivp"),
                         (peer, "cli0"), (name, "lo"), (peer, "lo")):
            sh(ns, "link", "set", link, "up")
        yield name, peer
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.mark.root
@pytest.mark.timeout(1800)
def test_sysctls_apply_in_a_namespace(applied, relay_netns):
    ns, _ = relay_netns
    conf = applied.chroot.path("/etc/sysctl.d/60-voxrelay-relay.conf")
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-p", str(conf)], check=True,
                   capture_output=True)

    def get(key: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key], check=True,
                              capture_output=True, text=True).stdout.strip()

    assert get(f"net.ipv4.conf.{PUBLIC_IF}.forwarding") == "1"
    assert get(f"net.ipv4.conf.{PRIVATE_IF}.forwarding") == "1"
    assert get("net.ipv4.ip_local_reserved_ports") == "40000-40999"


# Runs in the relay namespace: binds the relay port and another port, reports
# which of them datagrams from the client reached. The client sends to the
# other port first, so once the relay port's datagram is in, an accepted
# datagram to the other port would already be queued too.
_RECEIVER = r"""
import json, select, socket, sys
socks = {}
for port in (3479, 5000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.18.0.1", port))
    socks[port] = s
print("ready", flush=True)
ready, _, _ = select.select([socks[3479]], [], [], 20)
got = {3479: bool(ready)}
socks[5000].setblocking(False)
try:
    socks[5000].recv(100)
    got[5000] = True
except BlockingIOError:
    got[5000] = False
print(json.dumps(got), flush=True)
"""

_SENDER = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in (5000, 5000, 3479):
    s.sendto(b"probe", ("198.18.0.1", port))
"""


@pytest.mark.root
@pytest.mark.timeout(1800)
def test_nftables_ruleset_loads_in_a_namespace_and_opens_only_the_relay_port(
        applied, relay_netns):
    ns, peer = relay_netns
    ruleset = applied.chroot.path("/etc/voxrelay/nftables.nft")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", str(ruleset)], check=True)
    # Loaded twice: the add/delete/define idiom replaces the table in place.
    for _ in range(2):
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(ruleset)], check=True)
    listing = json.loads(subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "voxrelay"],
        check=True, capture_output=True, text=True).stdout)
    chains = {c["chain"]["name"]: c["chain"] for c in listing["nftables"] if "chain" in c}
    assert chains["forward"]["policy"] == "drop" and chains["forward"]["hook"] == "forward"
    assert chains["input"]["hook"] == "input"
    text = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "voxrelay",
                           "public_in"], check=True, capture_output=True, text=True).stdout
    assert "udp dport 3479 accept" in text
    assert "tcp dport 2222 accept" in text

    receiver = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _RECEIVER],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", peer, sys.executable, "-c", _SENDER], check=True,
                       timeout=30)
        got = json.loads(receiver.stdout.readline())
    finally:
        receiver.kill()
        receiver.wait(timeout=30)
    assert got == {"3479": True, "5000": False}
