# SPDX-License-Identifier: Apache-2.0
"""The relay image (``make image``) run with podman in a lab namespace, and a call through it.

The lab (lab.stack, one relay) builds the namespaces, the transceiver and the
model as usual; only the relay differs: instead of this process loading the
XDP program and starting the orchestrator, ``podman run`` starts the image
``voxrelay-relay:<version>`` in the relay's namespace
(``--network ns:/run/netns/<lab ns>``), with the command, the image name and
the capabilities of deploy/k8s/relay-daemonset.yaml (read from it, so that the
manifest and what is tested cannot drift), the host's bpffs, the host's kernel
headers read-only (bcc compiles against them) and a read-only root as the
manifest sets. The container loads the relay and runs the orchestrator; a
voice call from the client namespace then goes through it.

The image is built first when missing or stale (scripts/image.sh relay; its
base root and wheels are cached under /var/cache/voxrelay/images, so only a
cold machine pays the debootstrap).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "deploy" / "k8s" / "relay-daemonset.yaml"
MANIFEST_CONFIG = "/etc/voxrelay/voxrelay.toml"
# A cold build (debootstrap, the wheelhouse, the venv) takes minutes on 2 cores;
# a cached one only installs this checkout's wheel and imports the root.
BUILD_TIMEOUT = 1200
SENTENCE = "what is the weather like today"
KEY_WORDS = ("what is the weather",)
# The module's first test builds the image in its setup: the timeout covers a cold build.
pytestmark = [pytest.mark.netns, pytest.mark.root, pytest.mark.slow,
              pytest.mark.timeout(BUILD_TIMEOUT + 300)]
# No systemd here (cgroupfs, a file for events); runc, since crun 1.8 refuses
# this host's hybrid cgroups (v1 controllers plus a unified v2 mount).
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs", "--events-backend=file"]


def _ulimits() -> list[str]:
    """podman sets nofile/nproc above this host's hard limits by default, which
    root without CAP_SYS_RESOURCE (as here) cannot: keep ours (nproc capped, as
    podman fails to apply this host's own hard value)."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 8192)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def _relay_container() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def _version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@pytest.fixture(scope="module")
def relay_image() -> str:
    """The relay image's name, built (or found up to date) by scripts/image.sh."""
    subprocess.run(["bash", str(ROOT / "scripts" / "image.sh"), "relay"], check=True,
                   timeout=BUILD_TIMEOUT)
    return f"voxrelay-relay:{_version()}"


def test_the_manifest_names_the_image_make_image_builds(relay_image: str) -> None:
    assert _relay_container()["image"] == relay_image
    inspect = subprocess.run([*PODMAN, "image", "inspect", "--format",
                              "{{.Config.User}} {{index .Config.Labels \"io.voxrelay.inputs\"}}",
                              relay_image], check=True, capture_output=True, text=True, timeout=30)
    user, inputs = inspect.stdout.split()
    assert user == "0"  # the relay loads BPF: root in its user namespace, with capabilities
    assert len(inputs) == 16


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from lab.client import read_wav_pcm
    from lab.demo import speak

    return read_wav_pcm(speak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav"))


def podman_runner(image: str, container_name: str, workdir: Path):  # type: ignore[no-untyped-def]
    """``StackOptions.relay_runner``: the relay as the DaemonSet runs it, under podman."""
    container = _relay_container()
    caps = container["securityContext"]["capabilities"]
    command = list(container["command"])

    def argv(netns: str, config: Path) -> list[str]:
        import tomllib

        from orchestrator import hostnet

        # /proc/sys is read-only in the container: the host sets the relay's
        # sysctls first, as the Ansible relay role's sysctl.d does on a node.
        relay = tomllib.loads(config.read_text())["relay"]
        for ifname in (relay["public_interface"], relay["private_interface"]):
            hostnet.set_forwarding(ifname, netns)
        hostnet.reserve_local_ports(relay["port_min"], relay["port_max"], netns)
        return [
            *PODMAN, "run", "--rm", "--name", container_name, *_ulimits(),
            "--network", f"ns:/run/netns/{netns}",
            "--cap-drop", ",".join(caps["drop"]), "--cap-add", ",".join(caps["add"]),
            "--security-opt", "no-new-privileges",
            # As readOnlyRootFilesystem; podman adds a tmpfs /tmp (the manifest an emptyDir).
            "--read-only",
            "-v", "/sys/fs/bpf:/sys/fs/bpf",
            "-v", "/lib/modules:/lib/modules:ro", "-v", "/usr/src:/usr/src:ro",
            # The manifest's config path; the secret and state files it names live in the workdir.
            "-v", f"{config}:{MANIFEST_CONFIG}:ro", "-v", f"{workdir}:{workdir}",
            image, *command,
        ]

    return argv


def _podman_ps(container_name: str) -> list[str]:
    """``image status`` of each container of that name, running or not."""
    out = subprocess.run([*PODMAN, "ps", "-a", "--filter", f"name=^{container_name}$",
                          "--format", "{{.Image}} {{.Status}}"],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()


def _podman_state(container_name: str) -> tuple[str, str]:
    out = subprocess.run([*PODMAN, "inspect", "--format", "{{.ImageName}} {{.State.Status}}",
                          container_name], check=True, capture_output=True, text=True, timeout=30)
    image, state = out.stdout.split()
    return image, state


def _force_remove(container_name: str) -> None:
    subprocess.run([*PODMAN, "rm", "-f", "--ignore", "--time", "0", container_name],
                   check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def container_name() -> Iterator[str]:
    name = f"voxrelay-test-relay-{secrets.token_hex(3)}"
    yield name
    _force_remove(name)
    assert _podman_ps(name) == [], f"container {name} left behind"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(relay_image: str, container_name: str, tmp_path_factory: pytest.TempPathFactory):
    from lab.stack import StackOptions, start_stack

    workdir = tmp_path_factory.mktemp("image-lab")
    options = StackOptions(relays=1, workdir=workdir, start_timeout=120,
                           relay_runner=podman_runner(relay_image, container_name, workdir))
    try:
        async with start_stack(options) as running:
            yield running
    finally:
        # Stopping podman run stops the container (SIGTERM is proxied); this
        # is for a failure half-way, which must not leave it running.
        with contextlib.suppress(subprocess.SubprocessError):
            _force_remove(container_name)


@pytest.mark.asyncio(loop_scope="module")
async def test_call_through_the_relay_image(lab, relay_image: str, container_name: str,
                                            speech_pcm: bytes) -> None:
    from lab.call import TimedCallClient, speak_turn

    # The relay that forwards is the container's: the stack loaded nothing itself.
    image, state = _podman_state(container_name)
    assert image == f"localhost/{relay_image}" and state == "running", (image, state)
    relay = lab.relays[0]
    before = lab.relay_stats(0)

    async def call() -> tuple:
        async with TimedCallClient(lab.signaling_url, lab.api_key, timeout=30) as client:
            await client.wait_event("model", state="connected")
            turn = await speak_turn(client, speech_pcm, timeout=30)
            response = await client._session.get(client.location.lstrip("/"))
            assert response.status == 200, await response.text()
            return turn, await response.json()

    turn, status = await lab.client_call(call)
    after = lab.relay_stats(0)
    for word in KEY_WORDS:
        assert word in turn.transcript.lower(), f"{word!r} not in transcript {turn.transcript!r}"
    assert turn.first_reply_audio_at is not None, "no audible reply audio reached the client"
    # The transceiver saw the call from the relay's private address: through the relay.
    assert status["remote"][0] == relay.private_address, status
    forwarded = {name: after.get(name, 0) - before.get(name, 0)
                 for name in ("fwd_new_flow", "fwd_to_transceiver", "fwd_to_client")}
    assert forwarded["fwd_new_flow"] >= 1, forwarded
    assert forwarded["fwd_to_transceiver"] > 100 and forwarded["fwd_to_client"] > 100, forwarded
    log = lab.services["orchestrator-1"].log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-2000:]
