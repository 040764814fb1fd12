# SPDX-License-Identifier: Apache-2.0
"""Secret files (voxrelay/secrets.py): created safely, read strictly, rotated by lines."""

from __future__ import annotations

import stat

import pytest

from voxrelay.secrets import (
    SecretError,
    directory_client_secret,
    load_secrets,
    new_secret,
    write_secret_file,
)


def test_create_makes_a_private_file_once(tmp_path):
    path = tmp_path / "state" / "directory.secret"
    first = load_secrets(path, create=True)
    assert len(first) == 1 and len(first[0]) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Safe to run twice: the same secret, the file untouched.
    assert load_secrets(path, create=True) == first
    assert write_secret_file(path) == first[0]


def test_missing_file_without_create_says_where_it_comes_from(tmp_path):
    with pytest.raises(SecretError, match=r"directory secret file .*/nope does not exist: copy it "
                                          r"from the host that made it or set \$VOXRELAY_X"):
        load_secrets(tmp_path / "nope", env="VOXRELAY_X", what="directory secret")


def test_rotation_keeps_every_line_and_the_first_is_in_use(tmp_path):
    path = tmp_path / "api-key"
    new, old = new_secret(), new_secret()
    path.write_text(f"# rotated 2026-12-02\n{new}\n\n{old}\n")
    path.chmod(0o600)
    assert load_secrets(path) == [new, old]


@pytest.mark.parametrize(("text", "message"), [
    ("", "holds no secret"),
    ("# only a comment\n", "holds no secret"),
    ("short\n", "a secret of 5 characters is too short"),
])
def test_bad_contents_are_refused(tmp_path, text, message):
    path = tmp_path / "s"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(SecretError, match=message):
        load_secrets(path)


def test_a_file_every_user_can_read_is_refused(tmp_path):
    path = tmp_path / "s"
    path.write_text(new_secret() + "\n")
    path.chmod(0o644)
    with pytest.raises(SecretError, match=r"is open to every user .*chmod 600"):
        load_secrets(path)
    path.chmod(0o640)  # a service group may share it
    assert load_secrets(path)


def test_environment_wins_over_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VOXRELAY_T", "from-the-environment-0123")
    assert load_secrets(tmp_path / "absent", env="VOXRELAY_T") == ["from-the-environment-0123"]


def test_directory_client_secret_per_backend(tmp_path, monkeypatch):
    monkeypatch.delenv("VOXRELAY_DIRECTORY_SECRET", raising=False)
    absent = tmp_path / "absent"
    assert directory_client_secret(absent, "memory") == ""
    # A Redis URL with its own password needs no secret file...
    assert directory_client_secret(absent, "redis://:pw@10.0.0.5:6379/0") == ""
    # ...every other directory does.
    with pytest.raises(SecretError):
        directory_client_secret(absent, "http://10.0.0.1:7480")
    with pytest.raises(SecretError):
        directory_client_secret(absent, "redis://10.0.0.5:6379/0")
