"""Check a model bundle: model.json schema, file references confined to the bundle, and the
sha256 of every file. Exits 0 and prints a summary when the bundle is sound."""

from __future__ import annotations

import argparse
import json

from .bundle import load_bundle, resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder, its model.json, or 'default'")
    p.add_argument("--json", action="store_true", help="print the verified model.json")


def run(args: argparse.Namespace) -> int:
    b = load_bundle(resolve(args.bundle))
    if args.json:
        print(json.dumps(b.meta, indent=2))
    else:
        print(
            f"ok: {b.root} ({b.format}, {b.precision}, {len(b.meta['files'])} files verified, labels: {', '.join(b.labels)})"
        )
    return 0
