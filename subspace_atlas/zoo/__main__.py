"""``python -m subspace_atlas.zoo [ROOT] [--scale full|mini] [--seed N] [--only RUN ...]``: build the zoo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from subspace_atlas import zoo

    parser = argparse.ArgumentParser(prog="python -m subspace_atlas.zoo", description=zoo.__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="zoo", help="folder to build into (default: ./zoo)")
    parser.add_argument("--scale", choices=sorted(zoo.SCALES), default="full",
                        help="full: the real zoo (~10-15 min on 2 CPU cores); mini: seconds, for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="RUN", choices=[s.name for s in zoo.plan()],
                        help="build only these runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    args = parser.parse_args(argv)
    manifest = zoo.build(args.root, scale=args.scale, progress=not args.quiet, seed=args.seed, only=args.only,
                         threads=args.threads)
    print(f"{len(manifest['runs'])} run(s); manifest: {args.root}/{zoo.MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
