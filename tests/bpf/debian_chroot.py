# SPDX-License-Identifier: Apache-2.0
"""A disposable Debian 12 root for applying the Ansible roles for real.

The root is a debootstrap minbase tree (plus python3, which Ansible needs on
its targets, and systemd, which every Debian server has and whose
``systemd-analyze verify`` checks the unit files). Building one takes about a
minute, so the finished tree is cached as a tarball and unpacked per test.
Downloaded .deb files and pip's cache are kept too (bind-mounted into the root). The cache lives in
``$VOXRELAY_TEST_CACHE`` (default /var/cache/voxrelay-test) and is only ever
read or added to; deleting it costs time, nothing else.

Everything this module mounts or creates is undone by ``DebianChroot.close``,
which checks that no mount is left under the root before it deletes the tree
(and deletes with --one-file-system, so a leftover bind mount can never take a
host directory with it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("VOXRELAY_TEST_CACHE", "/var/cache/voxrelay-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = "python3,systemd"
# Bump when the recipe above changes, so an old cached tree is not reused.
ROOTFS_TARBALL = CACHE / f"rootfs-{SUITE}-minbase-v1.tar.gz"

# Package scripts in a chroot must not start daemons (Redis would start on the
# host's network): invoke-rc.d asks this script and gets "forbidden".
POLICY_RC_D = "#!/bin/sh\n# voxrelay test chroot: start no services\nexit 101\n"

SOURCES = f"""Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def run(cmd: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise with its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def ensure_rootfs_tarball() -> Path:
    """Build the cached Debian tree once; later calls return the tarball."""
    if ROOTFS_TARBALL.exists():
        return ROOTFS_TARBALL
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (scripts/setup.sh installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="voxrelay-debootstrap-", dir="/var/tmp"))
    try:
        run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(build), MIRROR],
            timeout=900)
        # Drop the downloaded .debs: the tree is what is cached.
        for deb in (build / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        partial = ROOTFS_TARBALL.with_suffix(".partial")
        run(["tar", "-C", str(build), "--numeric-owner", "-czf", str(partial), "."], timeout=600)
        partial.rename(ROOTFS_TARBALL)
    finally:
        _assert_nothing_mounted_under(build)
        shutil.rmtree(build, ignore_errors=True)
    return ROOTFS_TARBALL


def community_general_collection() -> Path:
    """A collections path holding community.general, for its chroot connection.

    ansible-core ships no chroot connection; community.general does. Galaxy is
    out of reach, and the `ansible` PyPI package (which bundles it, ~85
    collections, ~500 MB installed) is far more than this needs. So the
    `ansible` wheel matching the installed ansible-core is downloaded once with
    pip and only ansible_collections/community/general is unpacked from it.
    """
    import ansible.release

    major, minor = (int(x) for x in ansible.release.__version__.split(".")[:2])
    # ansible N bundles ansible-core 2.(N+7): 12.x <-> 2.19.
    wanted = f"ansible>={minor - 7},<{minor - 6}"
    dest = CACHE / f"collections-core{major}.{minor}"
    marker = dest / "ansible_collections/community/general/MANIFEST.json"
    if marker.exists():
        return dest
    with tempfile.TemporaryDirectory(prefix="voxrelay-ansible-wheel-") as tmp:
        run([str(Path(sys.executable).parent / "pip"), "download", "--no-deps", "-q", "-d", tmp,
             wanted], timeout=600)
        (wheel,) = Path(tmp).glob("ansible-*.whl")
        partial = Path(str(dest) + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist()
                       if n.startswith("ansible_collections/community/general/")]
            zf.extractall(partial, members)
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
    return dest


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _assert_nothing_mounted_under(root: Path) -> None:
    left = _mounts_under(root)
    if left:
        raise RuntimeError(f"refusing to delete {root}: still mounted: {left}")


@dataclass
class DebianChroot:
    """One unpacked root with /proc, /dev and the caches mounted into it."""

    root: Path
    mounts: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls) -> DebianChroot:
        tarball = ensure_rootfs_tarball()
        root = Path(tempfile.mkdtemp(prefix="voxrelay-target-", dir="/var/tmp"))
        target = cls(root)
        try:
            run(["tar", "-C", str(root), "--numeric-owner", "-xzf", str(tarball)], timeout=600)
            (root / "etc/apt/sources.list").write_text("")
            (root / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
            policy = root / "usr/sbin/policy-rc.d"
            policy.write_text(POLICY_RC_D)
            policy.chmod(0o755)
            shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
            # The local CAs this machine trusts (a CI network may inspect TLS
            # with its own CA): when the role installs ca-certificates, Debian's
            # update-ca-certificates adds them to the root's bundle, as on any host.
            local_cas = target.path("/usr/local/share/ca-certificates")
            local_cas.mkdir(parents=True, exist_ok=True)
            for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
                shutil.copyfile(crt, local_cas / crt.name)
            apt_cache = CACHE / "apt-archives"
            (apt_cache / "partial").mkdir(parents=True, exist_ok=True)
            target._mount(["-t", "proc", "proc"], root / "proc")
            target._mount(["--bind", "/dev"], root / "dev")
            target._mount(["--bind", str(apt_cache)], root / "var/cache/apt/archives")
            # pip on the target downloads from PyPI like on any host; its
            # cache (root's ~/.cache/pip) persists, so later runs download nothing.
            pip_cache = CACHE / "pip-cache"
            pip_cache.mkdir(parents=True, exist_ok=True)
            target._mount(["--bind", str(pip_cache)], root / "root/.cache/pip")
        except BaseException:
            target.close()
            raise
        return target

    def _mount(self, args: list[str], point: Path) -> None:
        point.mkdir(parents=True, exist_ok=True)
        run(["mount", *args, str(point)], timeout=60)
        self.mounts.append(point)

    def path(self, inside: str) -> Path:
        """Host path of ``inside`` (an absolute path in the root), not following links."""
        return self.root / inside.lstrip("/")

    def resolve(self, inside: str) -> Path:
        """Host path of ``inside`` with symlinks resolved inside the root."""
        out = run(["chroot", str(self.root), "readlink", "-f", inside], timeout=30).stdout.strip()
        return self.path(out)

    def run(self, cmd: list[str], timeout: float = 300, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        full = ["chroot", str(self.root), *cmd]
        if check:
            return run(full, timeout=timeout)
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)

    def close(self) -> None:
        for point in reversed(self.mounts):
            if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
        self.mounts.clear()
        _assert_nothing_mounted_under(self.root)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=True, timeout=300)
