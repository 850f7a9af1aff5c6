"""``bench.py logprob_import``: ``python -m raykd.cache import``'s throughput (rows/s, response tokens/s)
on an axolotl-layout source of a generated corpus, the bytes per token of the imported cache against the
source's, and the export back to axolotl's layout — the two directions side by side in one run."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import median

HELP = "cache import / export: rows/s, tokens/s and bytes per token against the axolotl source"


def add_arguments(p) -> None:
    """This benchmark's options (``python -m raykd bench logprob_import --help``)."""
    p.add_argument("--dialogs", type=int, default=6000)
    p.add_argument("--k", type=int, default=64, help="top-k per position in the source")
    p.add_argument("--vocab", type=int, default=2000, help="the BPE tokenizer's size")
    p.add_argument("--rounds", type=int, default=0, help="alternating rounds (median; default 3, --quick 2)")
    p.add_argument("--quick", action="store_true", help="1,500 dialogues, k 32")


def _source(prepared: str, manifest: dict, template, k: int, out: Path) -> tuple[int, int]:
    """An axolotl prepared-row source (row j over token j + 1, raw top-k log-probs of a seeded random
    distribution with the true next token ranked first) for every train pair; returns (rows, positions)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raykd.data.logprob_sources import prepared_sequence
    from raykd.data.shards import shard_paths

    g = np.random.default_rng(0)
    vocab = int(manifest["tokenizer"]["vocab_size"])
    rows, positions = 0, 0
    for n, path in enumerate(shard_paths(prepared, "train", manifest)):
        recs = []
        t = pq.read_table(path, columns=["q_input_ids", "a_input_ids"]).to_pydict()
        for q, a in zip(t["q_input_ids"], t["a_input_ids"]):
            seq, _ = prepared_sequence(template, q, a)
            L = len(seq)
            r = g.random((L, vocab))  # k distinct ids per position, the true next token among them, ranked first
            r[np.arange(L - 1), seq[1:]] = -1.0
            part = np.argpartition(r, k, axis=1)[:, :k]
            ids = np.take_along_axis(part, np.argsort(np.take_along_axis(r, part, 1), axis=1), 1)
            logp = np.sort(np.log(g.dirichlet(np.ones(4 * k), size=L)[:, :k]), axis=1)[:, ::-1]
            mask = np.ones((L, k), np.int8)
            ids[-1], logp[-1], mask[-1] = 0, -1e9, 0
            recs.append({"input_ids": seq, "target_token_ids": ids.tolist(),
                         "target_logprobs": logp.astype(np.float32).tolist(), "target_mask": mask.tolist()})
            positions += L
        pq.write_table(pa.Table.from_pylist(recs), out / f"part-{n:05d}.parquet", compression="zstd")
        rows += len(recs)
    return rows, positions


def _bytes(files, columns) -> int:
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            total += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns)
                         if rg.column(c).path_in_schema.split(".")[0] in columns)
    return total


def bench_logprob_import(args) -> dict:
    """Import the generated axolotl source into raykd's cache and export it back, alternating rounds
    (each import into a fresh directory: nothing reused); medians over rounds."""
    from raykd.data import logprob_import as I
    from raykd.data.shards import PrepareSettings, prepare
    from raykd.data.synth import write_corpus
    from raykd.data.template import causal_template
    from raykd.data.tokenizer import load_tokenizer

    dialogs, k = (1500, 32) if args.quick else (args.dialogs, args.k)
    rounds = args.rounds or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="raykd-bench-") as tmp:
        tmp = Path(tmp)
        write_corpus(tmp / "raw", dialogs, seed=0)
        m = prepare(PrepareSettings(raw=[str(tmp / "raw")], out=str(tmp / "p"), tokenizer=f"train-bpe:{args.vocab}",
                                    max_length=48, quiet=True))
        tpl = causal_template(load_tokenizer(str(tmp / "p" / m["tokenizer"]["path"])))
        (tmp / "src").mkdir()
        rows, positions = _source(str(tmp / "p"), m, tpl, k, tmp / "src")
        src_bytes = _bytes(sorted((tmp / "src").glob("*.parquet")), ("target_token_ids", "target_logprobs",
                                                                       "target_mask"))
        times: dict[str, list[float]] = {"import": [], "export": []}
        meta: dict = {}
        for r in range(rounds):
            for what in (("import", "export") if r % 2 == 0 else ("export", "import")):
                t = time.perf_counter()
                if what == "import":
                    meta = I.import_logprobs(I.ImportSettings("axolotl", str(tmp / "src")), str(tmp / "p"), m, tpl,
                                             tmp / f"cache-{r}", log=lambda s: None)
                else:  # the newest cache made so far
                    last = max(n for n in range(r + 1) if (tmp / f"cache-{n}").exists())
                    I.export_axolotl(tmp / f"cache-{last}", str(tmp / "p"), m, tpl, tmp / f"ax-{r}", log=lambda s: None)
                times[what].append(time.perf_counter() - t)
                print(f"  round {r + 1} {what}: {times[what][-1]:.2f} s", flush=True)
        cache_bytes = _bytes(sorted((tmp / "cache-0" / "train").glob("*.parquet")),
                             ("topk_ids", "topk_logp", "topk_tail"))
    med = {w: median(v) for w, v in times.items()}
    resp = meta["response_tokens"]
    out = {"bench": "logprob_import", "rows": rows, "k": k, "response_tokens": resp, "source_positions": positions,
           "import_s": round(med["import"], 2), "export_s": round(med["export"], 2),
           "import_rows_per_s": round(rows / med["import"], 1), "import_tokens_per_s": round(resp / med["import"]),
           "export_rows_per_s": round(rows / med["export"], 1),
           "source_bytes_per_position": round(src_bytes / positions, 1),
           "cache_bytes_per_response_token": round(cache_bytes / resp, 1),
           "cache_bytes_vs_source": round(cache_bytes / src_bytes, 3),
           "s_range": {w: [round(min(v), 2), round(max(v), 2)] for w, v in times.items()}, "rounds": rounds,
           "cores": os.cpu_count()}
    print(f"{rows:,} axolotl rows (top-{k}, {positions:,} positions, {resp:,} response tokens): import "
          f"{out['import_rows_per_s']:,.0f} rows/s = {out['import_tokens_per_s']:,} response tokens/s, export "
          f"{out['export_rows_per_s']:,.0f} rows/s; {out['cache_bytes_per_response_token']} B per response token in "
          f"the cache vs {out['source_bytes_per_position']} B per position in the source "
          f"(the cache is {out['cache_bytes_vs_source']:.1%} of the source's bytes)")
    return out
