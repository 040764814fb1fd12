# SPDX-License-Identifier: Apache-2.0
"""Regenerate the committed gRPC stubs from voice.proto.

The stubs (voice_pb2.py, voice_pb2_grpc.py, voice_pb2.pyi) are committed so
that neither the transceiver nor the model server needs grpcio-tools at run
time. tests/unit/test_model_proto.py regenerates them into a temporary folder
and fails if they differ from the committed files, so an edited .proto cannot
silently drift from its stubs. grpcio-tools is pinned in the test extra because
its output (and the runtime version check it embeds) changes between releases.

    python -m transceiver.model.genproto     # rewrite the stubs in place
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click
from grpc_tools import protoc  # the test extra's grpcio-tools: a dev tool, not run time

MODEL_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODEL_DIR.parent.parent
PROTO = MODEL_DIR / "voice.proto"
OUTPUTS = ("voice_pb2.py", "voice_pb2_grpc.py", "voice_pb2.pyi")


def generate(out_root: Path) -> dict[str, bytes]:
    """Run protoc on voice.proto with ``out_root`` as the output root.

    The proto is compiled under its package path (``transceiver/model/``) so the
    generated grpc module imports ``transceiver.model.voice_pb2`` rather than a
    top-level ``voice_pb2``. Returns {file name: content}.
    """
    rel = PROTO.relative_to(REPO_ROOT)
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{REPO_ROOT}", f"--python_out={out_root}",
        f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", str(rel),
    ])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {rel} (exit {rc})")
    gen_dir = out_root / rel.parent
    return {name: (gen_dir / name).read_bytes() for name in OUTPUTS}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in generate(Path(tmp)).items():
            (MODEL_DIR / name).write_bytes(content)
            click.echo(f"wrote {MODEL_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
