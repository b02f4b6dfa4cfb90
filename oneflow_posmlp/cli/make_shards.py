"""``tools/make_shards.py``: pack an ImageFolder tree into tar shards with an index (``data/shards.py``), or
index WebDataset shards made elsewhere (``--index-only``). Train on them with ``--opts data.format=shards
data.root=DST``."""
import argparse
import sys

from ..data.dataset import DataError
from ..data.shards import index_shards, make_shards


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="ImageFolder root: SRC/<split>/<class>/<images>")
    p.add_argument("--dst", required=True, help="shard folder: DST/<split>-NNNNNN.tar and DST/<split>-index.json")
    p.add_argument("--shard-mb", type=float, default=1024, help="start a new shard past this size (default 1024)")
    p.add_argument("--splits", nargs="+", help="splits to pack or index (default: every folder of SRC; with "
                                               "--index-only: train val)")
    p.add_argument("--index-only", action="store_true", help="index the WebDataset shards already in DST")
    p.add_argument("--classes", help="with --index-only: a text file of class names, one a line, in label order")
    args = p.parse_args(argv)
    if not args.index_only and not args.src:
        p.error("--src is required (or --index-only to index existing shards)")
    if args.shard_mb <= 0:
        p.error("--shard-mb must be > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.index_only:
            classes = None
            if args.classes:
                with open(args.classes) as f:
                    classes = [line.strip() for line in f if line.strip()]
            for split in args.splits or ("train", "val"):
                index_shards(args.dst, split, classes=classes)
        else:
            make_shards(args.src, args.dst, shard_mb=args.shard_mb, splits=args.splits)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
