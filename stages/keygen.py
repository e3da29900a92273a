"""keygen: a ZeroMQ CURVE key pair for one end of the ingest -> check hop.

Writes ``NAME.key`` (the public key: copy it to the other end) and ``NAME.key_secret`` (public and
secret key, mode 0600: it never leaves this host) in ZeroMQ's certificate format
(``zmq.auth.create_certificates``), which is what the ZMQ_CURVE_* settings read. Never prints the
secret key.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import click
import zmq
import zmq.auth

from pipeline import curve

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


@click.command()
@click.option("--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder the two key files go into (made, mode 0700, if missing)")
@click.option("--name", default="collector", show_default=True,
              help="file name stem: NAME.key (public) and NAME.key_secret (secret)")
@click.option("--force", is_flag=True, help="replace existing key files of that name")
def command(output: Path, name: str, force: bool) -> None:
    """Make a CURVE key pair: NAME.key (public) and NAME.key_secret (secret, mode 0600)."""
    if not zmq.has("curve"):
        raise click.ClickException("this libzmq was built without CURVE support")
    if not NAME.match(name) or name.endswith((".key", ".key_secret")):
        raise click.BadParameter(f"{name!r} is not a plain file name stem (letters, digits, '.', '_', '-')",
                                 param_hint="--name")
    public_path, secret_path = output / f"{name}.key", output / f"{name}.key_secret"
    existing = [str(p) for p in (public_path, secret_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise click.ClickException(f"{', '.join(existing)} already exist(s); give --force to replace")
    try:
        output.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (public_path, secret_path):
            if force and (path.exists() or path.is_symlink()):
                path.unlink()
        previous = os.umask(0o077)  # both files are born private; the public one is opened up after
        try:
            made_public, made_secret = zmq.auth.create_certificates(str(output), name)
        finally:
            os.umask(previous)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
    except OSError as exc:
        raise click.ClickException(f"cannot write keys into {output}: {exc.strerror or exc}") from None
    public_key, _ = curve.load_secret("--output", made_secret)  # reads back what was written
    click.echo(f"public key {public_key.decode()}")
    click.echo(f"wrote {made_public} (public: give it to the other end)")
    click.echo(f"wrote {made_secret} (secret, mode 0600: keep it on this host)")
