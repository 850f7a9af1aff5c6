"""`python -m raykd.data synth|prepare` — generate the corpus, or prepare raw data into Parquet shards."""

from __future__ import annotations

import argparse
import json
import sys

from raykd.errors import RaykdError


def main(argv: list[str] | None = None) -> int:
    """Run the data command line; returns the process exit code (2 for bad input)."""
    ap = argparse.ArgumentParser(prog="python -m raykd.data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sy = sub.add_parser("synth", help="write a generated MedDialog-CN corpus in the raw txt format")
    sy.add_argument("--out", required=True, help="directory for <year>.txt files")
    sy.add_argument("--dialogs", type=int, default=2000, help="number of consultations (default 2000)")
    sy.add_argument("--seed", type=int, default=0)
    pr = sub.add_parser("prepare", help="raw txt / JSON / HF dataset → tokenized Parquet shards + manifest")
    pr.add_argument("--raw", nargs="+", required=True,
                    help="raw txt or JSON files, directories (read recursively), or hf:PATH_OR_ID")
    pr.add_argument("--out", required=True, help="prepared directory to write")
    pr.add_argument("--tokenizer", default="train:8000",
                    help="HF tokenizer dir / hub id, train:VOCAB (WordPiece, for encoders; default) or train-bpe:VOCAB "
                         "(byte-level BPE, for causal LMs) trained on the train split")
    pr.add_argument("--max-length", type=int, default=512)
    pr.add_argument("--shard-rows", type=int, default=50000)
    pr.add_argument("--strict", action="store_true", help="exit 2 if any input item is bad")
    pr.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "synth":
            if args.dialogs < 1:
                raise RaykdError(f"--dialogs {args.dialogs}: must be at least 1")
            from raykd.data.synth import write_corpus

            paths = write_corpus(args.out, args.dialogs, args.seed)
            print(f"[synth] wrote {args.dialogs} dialogues in {len(paths)} files under {args.out}")
        else:
            from raykd.data.shards import PrepareSettings, prepare

            m = prepare(PrepareSettings(raw=args.raw, out=args.out, tokenizer=args.tokenizer,
                                        max_length=args.max_length, shard_rows=args.shard_rows,
                                        strict=args.strict, quiet=args.quiet))
            summary = {s: m["splits"][s]["rows"] for s in m["splits"]}
            print(json.dumps({"prepared": args.out, "rows": summary, "skipped": m["skipped_total"],
                              "duplicates_removed": m["counts"]["duplicates_removed"]}, ensure_ascii=False))
    except RaykdError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left in place", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
