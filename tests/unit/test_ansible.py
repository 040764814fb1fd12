# SPDX-License-Identifier: Apache-2.0
"""The Ansible roles: lint, syntax, and variables that match the config.

ansible-lint (production profile), ``ansible-playbook --syntax-check``, and a
check that every ``voxrelay.toml`` key has a documented role variable with the
same default as ``voxrelay/config.py``. The real apply to a Debian root is in
tests/bpf/test_ansible_apply.py (it needs root).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible_run import ANSIBLE_DIR, ROLE_TABLES, ROOT, ansible_env, ansible_tool
from voxrelay import config as cfg


def test_ansible_lint_is_clean_at_production_profile():
    proc = subprocess.run(
        [ansible_tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR, env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failure(s), 0 warning(s)" in proc.stdout + proc.stderr


def test_site_playbook_passes_syntax_check_with_example_inventory():
    proc = subprocess.run(
        [ansible_tool("ansible-playbook"), "--syntax-check", "-i", "inventory/example/hosts.yml",
         "site.yml"],
        cwd=ANSIBLE_DIR, env=ansible_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_inventory_has_the_four_groups():
    proc = subprocess.run(
        [ansible_tool("ansible-inventory"), "-i", "inventory/example/hosts.yml", "--list"],
        cwd=ANSIBLE_DIR, env=ansible_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    for group in ("relays", "transceivers", "models", "directory"):
        assert inv[group]["hosts"], group
    # Variables resolve across hosts: each transceiver lists every relay.
    hostvars = inv["_meta"]["hostvars"]
    ids = [hostvars[h]["transceiver_id"] for h in inv["transceivers"]["hosts"]]
    assert len(set(ids)) == len(ids), "transceiver ids must be unique"


_RENDER_PLAYBOOK = """
{% for group, roles in plays %}
- name: Render the config fragments of {{ group }}
  hosts: {{ group }}
  gather_facts: false
  connection: local
  # The roles are here only for their defaults: no task of theirs matches the
  # tag given on the command line. The post task is tagged always.
  roles: {{ roles }}
  post_tasks:
    - name: Render each fragment with the role's own template
      ansible.builtin.copy:
        content: "{{ '{{' }} lookup('template', '{{ ansible_dir }}/roles/' ~ item ~ '/templates/' ~ item ~ '.toml.j2') {{ '}}' }}"
        dest: "{{ out }}/{{ '{{' }} inventory_hostname {{ '}}' }}-{{ '{{' }} item {{ '}}' }}.toml"
        mode: "0644"
      loop: {{ roles }}
      tags: [always]
{% endfor %}
"""


def test_example_inventory_renders_a_valid_config_for_every_host(tmp_path):
    import jinja2

    plays = [("relays", ["relay", "orchestrator", "tcpfront"]), ("transceivers", ["transceiver"]),
             ("models", ["model"])]
    playbook = tmp_path / "render.yml"
    playbook.write_text(jinja2.Template(_RENDER_PLAYBOOK).render(
        plays=plays, ansible_dir=ANSIBLE_DIR, out=tmp_path))
    proc = subprocess.run(
        [ansible_tool("ansible-playbook"), "-i", "inventory/example/hosts.yml", str(playbook),
         "--tags", "render-only-nothing-else", "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=ANSIBLE_DIR, env=ansible_env(), capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    configs = {}
    for host in ("relay-fra1", "relay-iad1", "txr-1", "txr-2", "model-1"):
        fragments = sorted(tmp_path.glob(f"{host}-*.toml"))
        assert fragments, host
        path = tmp_path / f"{host}.assembled"
        path.write_text("".join(f.read_text() for f in fragments))
        configs[host] = cfg.load_config(path)
    assert configs["relay-fra1"].relay.name == "fra1"
    assert configs["relay-iad1"].relay.public_address == "203.0.113.20"
    assert configs["relay-fra1"].orchestrator.directory == "redis://10.0.0.5:6379/0"
    # Every transceiver offers every relay, and the ids differ.
    assert configs["txr-1"].transceiver.relays == ["203.0.113.10:3478 tcp=443",
                                                   "203.0.113.20:3478 tcp=443"]
    # The example relays run the ICE-TCP front on a port their filter admits.
    assert configs["relay-fra1"].tcpfront.port == 443
    assert 443 in configs["relay-fra1"].relay.public_tcp_ports
    assert configs["txr-2"].transceiver.directory == "redis://10.0.0.5:6379/0"
    assert configs["txr-1"].transceiver.id != configs["txr-2"].transceiver.id
    assert configs["model-1"].model.listen == "10.0.0.21:50051"


def _defaults_with_comments(role: str) -> tuple[dict[str, object], set[str]]:
    import yaml

    path = ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml"
    text = path.read_text()
    values = yaml.safe_load(text)
    documented = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^([a-z_][a-z0-9_]*):", line)
        if m and i > 0 and lines[i - 1].startswith("#"):
            documented.add(m.group(1))
    return values, documented


@pytest.mark.parametrize("role", sorted(ROLE_TABLES))
def test_every_config_key_is_a_documented_role_variable_with_the_same_default(role):
    table_cls, prefix = ROLE_TABLES[role]
    values, documented = _defaults_with_comments(role)
    template = (ANSIBLE_DIR / "roles" / role / "templates" / f"{role}.toml.j2").read_text()
    default = table_cls()
    for f in dataclasses.fields(table_cls):
        var = prefix + f.name
        assert var in values, f"{role}: no variable {var} for [{role}] {f.name}"
        assert var in documented, f"{role}: {var} has no comment above it"
        assert values[var] == getattr(default, f.name), (
            f"{role}: {var} defaults to {values[var]!r}, config.py to {getattr(default, f.name)!r}"
        )
        assert re.search(rf"^{f.name} = .*\b{var}\b", template, re.MULTILINE), (
            f"{role}.toml.j2 does not render {f.name} from {var}"
        )


def test_roles_call_the_voxrelay_cli_and_do_not_reimplement_it():
    units = {p.name: p.read_text() for p in ANSIBLE_DIR.glob("roles/*/templates/*.service.j2")}
    relay = units["voxrelay-relay.service.j2"]
    assert re.search(r"^ExecStart=.+/bin/voxrelay relay load --config ", relay, re.MULTILINE)
    assert re.search(r"^ExecReload=.+/bin/voxrelay relay load --replace --config ", relay, re.MULTILINE)
    assert re.search(r"^ExecStop=.+/bin/voxrelay relay unload --config ", relay, re.MULTILINE)
    assert "voxrelay orchestrator run --config" in units["voxrelay-orchestrator.service.j2"]
    assert "voxrelay transceiver run --config" in units["voxrelay-transceiver.service.j2"]
    assert "voxrelay model serve --config" in units["voxrelay-model.service.j2"]
    assert "voxrelay tcpfront run --config" in units["voxrelay-tcpfront.service.j2"]
    # Nothing in the roles touches BPF or links directly: that is the CLI's job.
    tasks = "\n".join(p.read_text() for p in ANSIBLE_DIR.glob("roles/*/tasks/*.yml"))
    for forbidden in ("bpftool", "ip link set", "xdp", "/sys/fs/bpf"):
        assert forbidden not in tasks, forbidden



def _assemble_validate_command(config_file: Path) -> list[str]:
    import shlex

    import yaml

    tasks = yaml.safe_load((ANSIBLE_DIR / "roles/voxrelay/tasks/assemble.yml").read_text())
    validate = tasks[0]["ansible.builtin.assemble"]["validate"]
    validate = validate.replace("{{ voxrelay_venv }}/bin/python", sys.executable)
    assert "{{" not in validate, validate
    return shlex.split(validate.replace("%s", shlex.quote(str(config_file))))


def test_assembled_config_is_validated_with_voxrelays_loader(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[relay]\npublic_port = 3479\n')
    ok = subprocess.run(_assemble_validate_command(good), capture_output=True, text=True,
                        env={"PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[relay]\nxdp_mode = "turbo"\n')
    proc = subprocess.run(_assemble_validate_command(bad), capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert proc.returncode != 0
    assert "[relay] xdp_mode 'turbo' must be 'native' or 'generic'" in proc.stderr
