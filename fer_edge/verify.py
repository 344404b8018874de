"""Check a model bundle: model.json schema, its manifest hash (over model.json's canonical form
and so every file's sha256), file references confined to the bundle, and the sha256 of every
file. Exits 0 and prints a summary with the manifest hash when the bundle is sound; --expect
also compares that hash with the one published with the model."""

from __future__ import annotations

import argparse
import json

from .bundle import load_bundle, reseal, resolve
from .errors import BundleError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder, its model.json, or 'default'")
    p.add_argument("--json", action="store_true", help="print the verified model.json")
    p.add_argument(
        "--reseal",
        action="store_true",
        help="give a bundle written by an older fer-edge (no manifest) its manifest hash, after "
        "checking every file's sha256",
    )
    p.add_argument(
        "--expect",
        metavar="SHA256",
        help="the manifest hash the bundle must have (from its publisher)",
    )


def run(args: argparse.Namespace) -> int:
    b = reseal(resolve(args.bundle)) if args.reseal else load_bundle(resolve(args.bundle))
    manifest = b.meta["integrity"]["manifest"]
    if args.expect is not None and args.expect.strip().lower() != manifest:
        raise BundleError(
            f"bundle {b.root} has the manifest hash {manifest}, not the expected {args.expect}"
        )
    if args.json:
        print(json.dumps(b.meta, indent=2))
    else:
        print(
            f"ok: {b.root} ({b.format}, {b.precision}, {len(b.meta['files'])} files verified, labels: {', '.join(b.labels)}; manifest sha256 {manifest})"
        )
    return 0
