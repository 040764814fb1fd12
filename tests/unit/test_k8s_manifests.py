# SPDX-License-Identifier: Apache-2.0
"""deploy/k8s: valid against the Kubernetes schemas, and shaped as the design needs.

kubernetes-validate bundles the OpenAPI schemas of each Kubernetes release, so
this runs offline. Strict mode rejects unknown fields (a typo in a field name
is an error, not a silently ignored key).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from voxrelay import config as cfg

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest release still maintained upstream when this was written, and the newest
# the validator ships.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def _manifests() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs() -> list[dict]:
    return [d for p in _manifests() for d in yaml.safe_load_all(p.read_text()) if d]


def _find(kind: str, name: str) -> dict:
    for doc in _docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in {K8S_DIR}")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path, version):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_misspelled_field():
    # Guards the test above: strict validation must fail on an unknown field.
    bad = _find("DaemonSet", "voxrelay-relay")
    bad = yaml.safe_load(yaml.safe_dump(bad))
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in _manifests())


def _pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def test_relay_daemonset_uses_host_network_capabilities_and_the_host_bpffs():
    ds = _find("DaemonSet", "voxrelay-relay")
    pod = _pod(ds)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    bpffs = [v for v in pod["volumes"] if v["name"] == "bpffs"]
    assert bpffs == [{"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "Directory"}}]
    containers = pod.get("initContainers", []) + pod["containers"]
    for c in containers:
        sc = c["securityContext"]
        # Capabilities, not privileged (the manifest's comment says why each).
        assert sc.get("privileged") is False
        assert {"BPF", "NET_ADMIN"} <= set(sc["capabilities"]["add"])
        assert sc["capabilities"]["drop"] == ["ALL"]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf"
        assert not mounts["bpffs"].get("readOnly", False)
    text = (K8S_DIR / "relay-daemonset.yaml").read_text()
    for cap in containers[0]["securityContext"]["capabilities"]["add"]:
        assert re.search(rf"^#\s+{cap}\s+\S", text, re.MULTILINE), f"no reason written for {cap}"
    # The container loads with --replace (a restarted one finds its program
    # attached) before it runs the orchestrator, and never unloads on stop
    # (the pinned flows outlive the pod).
    (relay,) = pod["containers"]
    script = relay["command"][-1]
    assert relay["command"][:2] == ["/bin/sh", "-c"]
    assert re.fullmatch(r"voxrelay relay load --replace --config (\S+) &&\s*"
                        r"exec voxrelay orchestrator run --config \1\s*", script), script
    assert "unload" not in yaml.safe_dump(ds)


def test_transceiver_readiness_and_liveness_run_voxrelay_probe_through_the_relay():
    dep = _find("Deployment", "voxrelay-transceiver")
    (container,) = _pod(dep)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The secrets come from the Secret, never from the manifest itself.
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
               if "valueFrom" in e}
    assert secrets == {
        "VOXRELAY_DIRECTORY_SECRET": {"name": "voxrelay-secrets", "key": "directory-secret"},
        "VOXRELAY_API_KEY": {"name": "voxrelay-secrets", "key": "api-key"}}
    cm = _find("ConfigMap", "voxrelay-transceiver")
    relays = tomllib.loads(cm["data"]["voxrelay.toml.in"].replace("@TRANSCEIVER_ID@", "1")
                           )["transceiver"]["relays"]
    # The probe goes through the first relay the answer offers, to the
    # directory the transceiver announces to.
    assert env["VOXRELAY_PROBE_RELAY"] == relays[0]
    assert env["VOXRELAY_DIRECTORY"] in cm["data"]["voxrelay.toml.in"]
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        script = command[-1]
        assert command[:2] == ["/bin/sh", "-c"]
        assert script.startswith("exec voxrelay probe "), script
        for flag in ("--relay", "--transceiver", "--directory", "--config"):
            assert flag in script, (probe, flag)
        # The id the init container rendered into the config.
        assert "$(cat /etc/voxrelay/transceiver-id)" in script


def test_relay_probes_check_the_program_is_attached():
    (container,) = _pod(_find("DaemonSet", "voxrelay-relay"))["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["voxrelay", "relay", "status"], (probe, command)


def test_model_and_transceiver_are_deployments_with_services():
    for name, service in (("voxrelay-transceiver", "voxrelay-signaling"),
                          ("voxrelay-model", "voxrelay-model"),
                          ("voxrelay-directory", "voxrelay-directory")):
        dep = _find("Deployment", name)
        svc = _find("Service", service)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), service
        assert svc["spec"]["type"] == "ClusterIP", "only the relay's UDP port is public"
        ports = {p["name"] for c in _pod(dep)["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


def test_no_manifest_exposes_a_port_publicly():
    for doc in _docs():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "DaemonSet"):
            for c in _pod(doc)["containers"]:
                assert all("hostPort" not in p for p in c.get("ports", [])), c["name"]


def test_relay_config_map_is_a_valid_voxrelay_config(tmp_path):
    cm = _find("ConfigMap", "voxrelay-relay")
    path = tmp_path / "voxrelay.toml"
    path.write_text(cm["data"]["voxrelay.toml"])
    loaded = cfg.load_config(path)
    assert loaded.orchestrator.directory.startswith("redis://voxrelay-directory.")


def test_transceiver_config_is_rendered_with_an_id_from_the_pod_ip(tmp_path):
    cm = _find("ConfigMap", "voxrelay-transceiver")
    (init,) = _pod(_find("Deployment", "voxrelay-transceiver"))["initContainers"]
    script = init["command"][-1]
    (tmp_path / "template").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "template" / "voxrelay.toml.in").write_text(cm["data"]["voxrelay.toml.in"])
    script = script.replace("/etc/voxrelay-template", str(tmp_path / "template"))
    script = script.replace("/etc/voxrelay/", str(tmp_path / "config") + "/")
    subprocess.run(["/bin/sh", "-c", script], env={"POD_IP": "10.244.3.17", "PATH": "/usr/bin:/bin"},
                   check=True, timeout=30)
    loaded = cfg.load_config(tmp_path / "config" / "voxrelay.toml")
    assert loaded.transceiver.id == (10 << 24) | (244 << 16) | (3 << 8) | 17
    assert loaded.transceiver.private_address == "10.244.3.17"
    assert loaded.transceiver.model.startswith("voxrelay-model.")
    # One process per pod: a second worker's id (id + 1) would be another pod's IP.
    assert loaded.transceiver.workers == 1
    assert (tmp_path / "config" / "transceiver-id").read_text().strip() == str(loaded.transceiver.id)
    raw = tomllib.loads((tmp_path / "config" / "voxrelay.toml").read_text())
    assert "@" not in str(raw), "a placeholder was left unrendered"


# What `make image` (scripts/image.sh) builds: voxrelay-<image>:<version> for
# each deploy/images/<image>.packages.
IMAGE_LISTS = K8S_DIR.parent / "images"
IMAGE_FOR = {
    ("DaemonSet", "voxrelay-relay"): "relay",
    ("DaemonSet", "voxrelay-tcpfront"): "relay",  # the front ships with the orchestrator
    ("Deployment", "voxrelay-transceiver"): "transceiver",
    ("Deployment", "voxrelay-model"): "model",
}


def test_every_voxrelay_container_runs_an_image_that_make_image_builds():
    version = tomllib.loads((K8S_DIR.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    built = {p.stem for p in IMAGE_LISTS.glob("*.packages")}
    assert built == set(IMAGE_FOR.values())
    script = (K8S_DIR.parents[1] / "scripts" / "image.sh").read_text()
    assert re.search(r"^ALL_IMAGES=\((.*)\)$", script, re.MULTILINE).group(1).split() == list(dict.fromkeys(IMAGE_FOR.values()))
    seen = set()
    for doc in _docs():
        if doc["kind"] not in ("DaemonSet", "Deployment"):
            continue
        pod = _pod(doc)
        for c in pod.get("initContainers", []) + pod["containers"]:
            if c["image"].startswith("redis:"):
                continue  # the directory runs upstream Redis (directory.yaml)
            want = IMAGE_FOR[(doc["kind"], doc["metadata"]["name"])]
            assert c["image"] == f"voxrelay-{want}:{version}", (doc["metadata"]["name"], c["name"])
            seen.add(want)
    assert seen == built, "an image make image builds is used by no manifest"
