"""The ``fedxrec`` command: ``fedxrec <command> [options]``.

Commands: ``download`` (data, checksums verified), ``central`` (the centralised reference run and
baselines), ``bench-core`` (core benchmark), ``serve`` (the explanation API).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _download(argv: list[str]) -> None:
    from shared.data import KG_VERSIONS, default_data_dir
    from shared.download import download_kg, download_ml100k

    ap = argparse.ArgumentParser(prog="fedxrec download", description="Download ml-100k and its DBpedia KG.")
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--kg-version", choices=KG_VERSIONS, default="dbpedia-live-2024")
    args = ap.parse_args(argv)
    if not (args.data_dir / "ml-100k" / "u.data").exists():
        download_ml100k(args.data_dir)
    download_kg(args.data_dir, args.kg_version)


def _central(argv: list[str]) -> None:
    from simulations.bench_core import main as bench

    bench(["--runs", "mostpop,bprmf-central,central", *argv])


def _bench_core(argv: list[str]) -> None:
    from simulations.bench_core import main as bench

    bench(argv)


def _serve(argv: list[str]) -> None:
    from server.api.cli import serve

    serve(argv)


COMMANDS = {"download": _download, "central": _central, "bench-core": _bench_core, "serve": _serve}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
            raise SystemExit(2)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
