# SPDX-License-Identifier: Apache-2.0
"""The ICE-TCP front deployed: its systemd unit (deploy/systemd, the Ansible role's
template) and its Kubernetes DaemonSet (deploy/k8s), shaped as the front needs.

Schema validation of every manifest is tests/unit/test_k8s_manifests.py's;
lint, syntax and variables of the role are tests/unit/test_ansible.py's; the
real apply (the unit installed, verified and enabled in a Debian root) is
tests/bpf/test_ansible_apply.py's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jinja2
import yaml

from tests.unit.test_k8s_manifests import K8S_DIR, _find, _pod
from voxrelay import config as cfg

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "ansible/roles/tcpfront/templates/voxrelay-tcpfront.service.j2"
UNIT = ROOT / "deploy/systemd/voxrelay-tcpfront.service"
MANAGED = ("Rendered from ansible/roles/tcpfront/templates/voxrelay-tcpfront.service.j2 "
           "with the role's defaults")


def _render_with_role_defaults() -> str:
    values: dict[str, object] = {}
    for role in ("voxrelay", "relay", "tcpfront"):
        values.update(yaml.safe_load((ROOT / f"ansible/roles/{role}/defaults/main.yml").read_text()))
    values["ansible_managed"] = MANAGED
    # A unit file, not HTML: nothing to escape (Ansible renders it unescaped too).
    env = jinja2.Environment(undefined=jinja2.StrictUndefined,  # noqa: S701
                             keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(**values)


def test_the_plain_unit_is_the_roles_template_with_its_defaults() -> None:
    # One unit, two ways to install it: they must not drift apart.
    assert UNIT.read_text() == _render_with_role_defaults(), (
        "deploy/systemd/voxrelay-tcpfront.service differs from the role's template "
        "rendered with its defaults: render it again")


def test_the_unit_runs_the_cli_with_what_the_front_needs() -> None:
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=/opt/voxrelay/bin/voxrelay tcpfront run --config "
                     r"/etc/voxrelay/voxrelay.toml$", text, re.MULTILINE)
    # After the relay (it reads its pins), restarted when it fails.
    assert re.search(r"^After=.*voxrelay-relay\.service", text, re.MULTILINE)
    assert "Restart=on-failure" in text
    # Only the capabilities it uses, and descriptors for 2 per connection.
    (caps,) = re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.MULTILINE)
    assert set(caps.split()) == {"CAP_BPF", "CAP_NET_BIND_SERVICE"}
    (nofile,) = re.findall(r"^LimitNOFILE=(\d+)$", text, re.MULTILINE)
    assert int(nofile) >= 2 * cfg.TcpFrontConfig().max_connections + 64


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants ExecStart to exist: point it at this venv's voxrelay.
    unit = tmp_path / "voxrelay-tcpfront.service"
    unit.write_text(UNIT.read_text().replace("/opt/voxrelay/bin/voxrelay",
                                             str(Path(sys.executable).parent / "voxrelay")))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    # verify exits 0 on an unknown key too, with a warning: any output is a problem.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_tcpfront_daemonset_runs_beside_the_relay_with_two_capabilities() -> None:
    ds = _find("DaemonSet", "voxrelay-tcpfront")
    relay = _find("DaemonSet", "voxrelay-relay")
    pod, relay_pod = _pod(ds), _pod(relay)
    assert pod["hostNetwork"] is True
    # The same nodes as the relay.
    assert pod["nodeSelector"] == relay_pod["nodeSelector"]
    assert pod["tolerations"] == relay_pod["tolerations"]
    (front,) = pod["containers"]
    assert front["command"] == ["voxrelay", "tcpfront", "run", "--config",
                                "/etc/voxrelay/voxrelay.toml"]
    sc = front["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "NET_BIND_SERVICE"]}
    text = (K8S_DIR / "tcpfront-daemonset.yaml").read_text()
    for cap in sc["capabilities"]["add"]:
        assert re.search(rf"^#\s+{cap}\s+\S", text, re.MULTILINE), f"no reason written for {cap}"
    mounts = {m["name"]: m for m in front["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The relay's pins, read-only (it never pins); the relay's config.
    assert mounts["bpffs"] == {"name": "bpffs", "mountPath": "/sys/fs/bpf", "readOnly": True}
    assert volumes["bpffs"]["hostPath"]["path"] == "/sys/fs/bpf"
    assert volumes["config"]["configMap"]["name"] == "voxrelay-relay"
    # No probe connects to the front's port (it would count as a refusal).
    assert "tcpSocket" not in yaml.safe_dump(ds)


def test_the_relay_pod_reads_the_fronts_counters_from_the_same_host_directory(
        tmp_path: Path) -> None:
    front_pod = _pod(_find("DaemonSet", "voxrelay-tcpfront"))
    relay_pod = _pod(_find("DaemonSet", "voxrelay-relay"))

    def stats_mount(pod: dict) -> tuple[str, str, bool]:  # type: ignore[type-arg]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tcpfront-stats"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tcpfront-stats"]
        return volume["hostPath"]["path"], mount["mountPath"], mount.get("readOnly", False)

    host, path, read_only = stats_mount(front_pod)
    relay_host, relay_path, relay_read_only = stats_mount(relay_pod)
    assert (host, path, read_only) == (relay_host, relay_path, False)
    assert relay_read_only is True  # the orchestrator only reads them
    data = _find("ConfigMap", "voxrelay-relay")["data"]["voxrelay.toml"]
    conf = tmp_path / "voxrelay.toml"
    conf.write_text(data)
    loaded = cfg.load_config(conf)
    # The file lies in the shared directory, and the relay admits the front's port.
    assert Path(loaded.tcpfront.stats_file).parent == Path(path)
    assert loaded.tcpfront.port in loaded.relay.public_tcp_ports
    assert tomllib.loads(data)["tcpfront"]["workers"] == 0  # one worker per CPU
