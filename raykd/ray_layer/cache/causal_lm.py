"""R: the teacher-output cache of a causal teacher — its top-k logits and / or hidden states over the
train split, computed once with Ray Data and read by every trial instead of running the teacher.

Per QA pair (one prompt + response sequence, composed by the study's ``CausalTemplate``) the shards
under ``PREPARED/teacher_cache/<key>/train/`` hold the token columns plus, by ``teacher.cache``:

* ``logits`` — for each response token (the positions ``chosen`` marks, in order): ``topk_ids`` (int32,
  [n, K]), ``topk_logp`` (the log-probabilities at T = 1, fp16, [n, K], descending) and ``topk_tail``
  (log(1 − Σ_{top K} p_T) for every temperature of the study, fp16, [n, len(temperatures)]) as bytes;
  ``raykd.distill.topk`` turns them into the (k + 1)-category distribution any k ≤ K and cached T needs.
* ``hidden`` — ``h{L}``: layer L's hidden states of the whole sequence (fp16 bytes, [length, hidden]).

The key hashes the teacher's weights, the data, the template, the layers, K, the temperatures and the
format, so a changed input gets a new cache and an unchanged one is reused across trials and studies;
the directory appears by one rename when complete. Which trials read it: ``causal_needs``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from raykd.data.collate import CausalCollate
from raykd.data.shards import shard_paths
from raykd.errors import RaykdError
from raykd.ray_layer.cache.builder import (build_inputs, cache_dir_for, load_cache_manifest, refuse_above,
                                          teacher_fingerprint, teacher_pass, write_cache)
from ray.data.collate_fn import NumpyBatchCollateFn

from raykd.ray_layer.stream import TOKEN_COLUMNS, read_parquet

CAUSAL_CACHE_VERSION = 1
TOPK_COLUMNS = ("topk_ids", "topk_logp", "topk_tail")
ID_BYTES, LOGP_BYTES, TAIL_BYTES = 4, 2, 2  # int32 ids (vocabularies beyond 65,536), fp16 values
CACHED_TOPK_KEYS = ("topk", "cached_topk", "temperature", "temperature_index", "temperatures")  # trial → collator
LOGIT_METHODS = ("kd", "minillm", "gkd")  # a divergence at the response positions, nothing else from the teacher


def causal_needs(method: str, params: dict) -> set[str] | str:
    """What a causal trial reads from its teacher — a subset of {"hidden", "logits"} (empty: no teacher
    at all) — or, as a string, why it must run the teacher online."""
    if method == "gkd" and (params.get("lmbda", 0.0) > 0 or params.get("seq_kd", False)):
        return "gkd with lmbda > 0 or seq_kd scores freshly generated responses"
    if method in LOGIT_METHODS:
        return {"logits"}
    if method == "feature_align":
        return {"hidden"} | ({"logits"} if params.get("logit", True) else set())
    if method == "structural":
        return {"hidden"}
    if method in ("sft", "no_distill"):
        return set()
    return f"method {method} is not known to read only hidden states or logits"


def logit_temperature(method: str, params: dict) -> float:
    """The temperature at which a causal method compares logits (MiniLLM's reverse KL: 1)."""
    return 1.0 if method == "minillm" else float(params.get("temperature", 1.0))


def provides(kind: str) -> set[str]:
    """What a cache of ``teacher.cache`` = ``kind`` holds."""
    return {"none": set(), "hidden": {"hidden"}, "logits": {"logits"}, "both": {"hidden", "logits"}}[kind]


def causal_cache_key(fingerprint: str, manifest: dict, template: dict, layers: list[int], topk: int,
                     temperatures: list[float], vocab: int) -> str:
    """Content hash of everything a causal cache depends on."""
    payload = {"vocab": vocab, "teacher": fingerprint, "data": manifest["key"], "max_length": manifest["max_length"],
               "template": template, "layers": sorted(layers), "topk": topk, "temperatures": sorted(temperatures),
               "family": "causal_lm", "version": CAUSAL_CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def token_counts(prepared: str, manifest: dict, template: dict) -> tuple[int, int]:
    """(sequence tokens, response tokens) of the train split under ``template``."""
    import pyarrow.parquet as pq

    from raykd.data.template import CausalTemplate

    tpl = CausalTemplate.from_dict(template)
    seq = resp = 0
    for path in shard_paths(prepared, "train", manifest):
        t = pq.read_table(path, columns=["q_input_ids", "a_input_ids"])
        for q, a in zip(t.column("q_input_ids").to_pylist(), t.column("a_input_ids").to_pylist()):
            n_resp = len(tpl.response(a))
            seq += len(tpl.prompt(q)) + n_resp
            resp += n_resp
    return seq, resp


def bytes_per_response_token(topk: int, temperatures: int) -> int:
    """Bytes the logit cache stores per response token (before Parquet's compression)."""
    return topk * (ID_BYTES + LOGP_BYTES) + temperatures * TAIL_BYTES


# ------------------------------------------------------------------------------------------ writing
class CausalTeacherOutputs:
    """Ray Data actor: a pyarrow batch of prepared rows → the same rows plus the cached columns (see
    the module docstring). Loads the teacher once per actor, as trials hold it (bf16 weights and
    autocast on CUDA, fp32 on CPU)."""

    def __init__(self, teacher: str, teacher_load: dict, template: dict, layers: list[int], topk: int,
                 temperatures: list[float], vocab: int | None, threads: int = 0, chunk_tokens: int = 1024):
        import torch

        from raykd.data.template import CausalTemplate
        from raykd.models.teacher import load_teacher
        from raykd.train.precision import frozen_on, precision_policy

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision_policy(self.device, "auto", "causal_lm")
        self.teacher = frozen_on(load_teacher(teacher, **teacher_load), self.device, self.precision, "causal_lm")
        self.collate = CausalCollate(CausalTemplate.from_dict(template))
        self.layers, self.topk, self.temperatures = sorted(layers), topk, list(temperatures)
        self.vocab, self.chunk_tokens = vocab, chunk_tokens

    def __call__(self, batch):
        import pyarrow as pa
        import torch

        from raykd.distill.topk import teacher_topk

        cols = {k: batch.column(k).to_numpy(zero_copy_only=False) for k in ("q_input_ids", "a_input_ids")}
        c = self.collate(cols)
        ids, mask = c["input_ids"].to(self.device), c["attention_mask"].to(self.device)
        response = c["response_mask"].bool().to(self.device)
        with torch.no_grad(), self.precision.autocast():
            out = self.teacher.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=bool(self.layers))
        lengths = mask.sum(1).tolist()
        for layer in self.layers:
            h = out.hidden_states[layer].to(torch.float16).cpu().numpy()
            batch = batch.append_column(f"h{layer}", pa.array([h[i, :n].tobytes() for i, n in enumerate(lengths)],
                                                               type=pa.binary()))
        if self.topk:
            chosen = torch.nn.functional.pad(response[:, 1:], (0, 1), value=False)  # next token is a response token
            head = self.teacher.get_output_embeddings()
            tids, logp, tails = teacher_topk(out.last_hidden_state[chosen], head.weight, head.bias, self.topk,
                                             self.temperatures, vocab=self.vocab, chunk_tokens=self.chunk_tokens)
            counts = chosen.sum(1).tolist()
            parts = [t.cpu().numpy() for t in (tids, logp.half(), tails.half())]
            for name, arr in zip(TOPK_COLUMNS, parts):
                rows, start = [], 0
                for n in counts:
                    rows.append(arr[start:start + n].tobytes())
                    start += n
                batch = batch.append_column(name, pa.array(rows, type=pa.binary()))
        return batch


def build_causal_cache(prepared: str, teacher: str, template: dict, layers: list[int], topk: int,
                       temperatures: list[float], teacher_load: dict | None = None, max_bytes: float = 20e9,
                       batch_size: int = 32, vocab: int | None = None, log=print) -> tuple[Path, dict]:
    """Write (or reuse) the causal teacher cache of ``prepared``'s train split: hidden states of
    ``layers`` and / or the top-``topk`` logits (0: none) at ``temperatures``. Returns (directory, its
    manifest). Prints the estimated size first and refuses (RaykdError) above ``max_bytes``. Needs a
    running Ray; one actor per GPU, or CPU actors leaving one CPU for the reads."""
    teacher_load = teacher_load or {}
    manifest, tconf = build_inputs(prepared, teacher, teacher_load, layers)
    vocab = vocab or int(manifest["tokenizer"]["vocab_size"])
    topk = min(topk, vocab - 1) if topk else 0
    key = causal_cache_key(teacher_fingerprint(teacher, teacher_load.get("revision")), manifest, template, layers,
                           topk, temperatures, vocab)
    out = cache_dir_for(prepared, key)
    if (out / "manifest.json").exists():
        log(f"[cache] reusing {out}")
        return out, load_cache_manifest(out)
    seq, resp = token_counts(prepared, manifest, template)
    size = seq * tconf.hidden_size * 2 * len(layers) + (resp * bytes_per_response_token(topk, len(temperatures))
                                                         if topk else 0)
    train_rows = manifest["splits"]["train"]["rows"]
    what = ([f"hidden states of layers {sorted(layers)} ({seq:,} tokens)"] if layers else []) + \
        ([f"top-{topk} logits at T = {sorted(temperatures)} ({resp:,} response tokens)"] if topk else [])
    log(f"[cache] causal teacher ({tconf.num_hidden_layers} layers, hidden {tconf.hidden_size}) over {train_rows:,} "
        f"train pairs: {' and '.join(what)}: about {size / 1e9:.3f} GB → {out}")
    refuse_above(size, max_bytes, "lower teacher.cache_topk, cache fewer layers")
    ds = teacher_pass(prepared, CausalTeacherOutputs, {
        "teacher": teacher, "teacher_load": teacher_load, "template": template, "layers": sorted(layers),
        "topk": topk, "temperatures": sorted(temperatures), "vocab": vocab}, batch_size)
    meta = write_cache(ds, out, train_rows, size, {
        "key": key, "version": CAUSAL_CACHE_VERSION, "family": "causal_lm", "data_key": manifest["key"],
        "teacher": teacher, "layers": sorted(layers), "hidden": tconf.hidden_size, "topk": topk,
        "temperatures": sorted(temperatures), "vocab": vocab, "sequence_tokens": seq, "response_tokens": resp,
        "template": template}, log)
    return out, meta


# ------------------------------------------------------------------------------------------ reading
def causal_cached_dataset(cache_dir: str | Path, layers: list[int], logits: bool, num_cpus: float | None = None):
    """A ``ray.data.Dataset`` of the cache's train rows: the token columns, ``h{L}`` for ``layers`` and,
    with ``logits``, the top-k columns (everything else stays on disk)."""
    meta = load_cache_manifest(cache_dir)
    missing = sorted(set(layers) - set(meta["layers"]))
    if missing:
        raise RaykdError(f"teacher cache {cache_dir}: layers {missing} are not cached (it has {meta['layers']})")
    if logits and not meta.get("topk"):
        raise RaykdError(f"teacher cache {cache_dir}: holds no top-k logits")
    columns = list(TOKEN_COLUMNS) + [f"h{x}" for x in sorted(layers)] + (list(TOPK_COLUMNS) if logits else [])
    paths = [str(Path(cache_dir) / "train" / n) for n in sorted(meta["files"])]
    return read_parquet(paths, num_cpus).select_columns(columns)


class CausalCachedCollate(CausalCollate):
    """``CausalCollate`` for cache rows: adds ``teacher_cached`` = {"hidden": {layer: [b, t, hidden]
    float32, zero at padding}, "topk_ids": int64 [n, k], "topk_lp": float32 [n, k + 1]} — the teacher's
    (k + 1)-category log-probabilities at ``temperature`` over the response positions in row-major
    order, as ``DistillMethod`` reads ``chosen`` positions. Refuses rows whose cached lengths do not
    match the sequences it builds (a cache of another template or data)."""

    def __init__(self, template, departments: dict[str, int] | None, layers: list[int], hidden: int,
                 topk: int = 0, cached_topk: int = 0, temperature: float = 1.0, temperature_index: int = 0,
                 temperatures: int = 1):
        super().__init__(template, departments)
        self.layers, self.hidden = sorted(layers), hidden
        self.topk, self.cached_topk, self.temperature = topk, cached_topk, temperature
        self.t_index, self.n_temps = temperature_index, temperatures

    def __call__(self, batch: dict) -> dict:
        import torch

        from raykd.distill.topk import teacher_log_probs

        out = super().__call__({k: v for k, v in batch.items() if not k.startswith(("h", "topk_"))})
        lengths, width = out["attention_mask"].sum(1).tolist(), out["input_ids"].shape[1]
        cached: dict = {"hidden": {}}
        for layer in self.layers:
            arr = np.zeros((len(lengths), width, self.hidden), dtype=np.float32)
            for i, b in enumerate(batch[f"h{layer}"]):
                h = np.frombuffer(b, dtype=np.float16).reshape(-1, self.hidden)
                _check_len(h.shape[0], lengths[i], "sequence")
                arr[i, : h.shape[0]] = h
            cached["hidden"][layer] = torch.from_numpy(arr)
        if self.topk:
            resp = out["response_mask"].sum(1).tolist()
            K = self.cached_topk
            ids = [np.frombuffer(b, dtype=np.int32).reshape(-1, K) for b in batch["topk_ids"]]
            for i, x in enumerate(ids):
                _check_len(x.shape[0], resp[i], "response")
            logp = np.concatenate([np.frombuffer(b, dtype=np.float16).reshape(-1, K) for b in batch["topk_logp"]])
            tail = np.concatenate([np.frombuffer(b, dtype=np.float16).reshape(-1, self.n_temps)
                                   for b in batch["topk_tail"]])[:, self.t_index]
            cached["topk_ids"] = torch.from_numpy(np.concatenate(ids)[:, : self.topk].astype(np.int64))
            cached["topk_lp"] = teacher_log_probs(torch.from_numpy(logp), torch.from_numpy(tail), self.temperature,
                                                  self.topk)
            cached["topk_temperature"] = self.temperature
        out["teacher_cached"] = cached
        return out


class CausalCachedCollator(CausalCachedCollate, NumpyBatchCollateFn):
    """Ray Data ``collate_fn`` of causal trials that read the cache: see ``CausalCachedCollate``."""


def _check_len(cached: int, built: int, what: str) -> None:
    if cached != built:
        raise RaykdError(f"teacher cache: a row's cached {what} has {cached} tokens, the trial builds {built}: the "
                         "cache was made with another template or data (delete it to rebuild)")


def causal_cached_targets(cached: dict, device) -> dict:
    """The ``targets`` a causal method reads (``hidden`` {layer: [b, t, hidden]}, ``topk_ids``,
    ``topk_lp``) on ``device``, from a ``CausalCachedCollate`` batch's ``teacher_cached``."""
    out = {"hidden": {k: v.to(device, non_blocking=True) for k, v in cached["hidden"].items()}}
    for key in ("topk_ids", "topk_lp"):
        if key in cached:
            out[key] = cached[key].to(device, non_blocking=True)
    if "topk_temperature" in cached:
        out["topk_temperature"] = cached["topk_temperature"]
    return out


# ------------------------------------------------------------------------------------------ a study's cache
def study_cache_request(cfg, teacher_layers: int, searched, force: bool = False) -> dict | None:
    """What a causal study caches: ``{"layers", "topk", "temperatures"}`` (layers [] / topk 0: none of
    that kind), or None when ``teacher.cache`` is none (and not ``force``) or no trial could read it.
    ``force`` with cache none caches whatever the study's methods read. ``searched(key)``: the values
    the study's space gives a dotted key."""
    from raykd.ray_layer.cache.masked_lm import study_layers

    kind = cfg.teacher.cache
    if kind == "none" and not force:
        return None
    offered = provides("both" if kind == "none" else kind)
    wanted: set[str] = set()
    for m in {cfg.method.name} | set(searched("method.name")):
        for params in (cfg.method.params, {}):  # a searched setting (e.g. gkd's lmbda) may allow it
            needs = causal_needs(m, params)
            if isinstance(needs, set):
                wanted |= needs if needs <= offered else set()  # a trial reads the cache only if it has all it needs
                break
    if not wanted:
        return None
    temps = {1.0} | {float(t) for t in [cfg.method.params.get("temperature", 1.0),
                                        *searched("method.params.temperature")]}
    return {"layers": study_layers(cfg, teacher_layers) if "hidden" in wanted else [],
            "topk": max([cfg.teacher.cache_topk, *searched("teacher.cache_topk")]) if "logits" in wanted else 0,
            "temperatures": sorted(temps)}


def trial_causal_cache(cfg, cache: dict) -> dict | None:
    """What a causal trial reads from the study's cache (``cache``: the plan's entry), or None when it
    runs its teacher online: its method needs what the cache lacks, or generates, or reads no teacher.
    With an imported cache (``teacher.cache_import``) a trial that needs the teacher but cannot read it is
    an error (RaykdError): the model whose log-probs were imported is not the one it would run."""
    out = _trial_causal_cache(cfg, cache)
    needs = causal_needs(cfg.method.name, cfg.method.params)
    if out is None and getattr(cfg.teacher, "cache_import", None) and needs:
        t = logit_temperature(cfg.method.name, cfg.method.params)
        raise RaykdError(f"method {cfg.method.name} (T = {t}) cannot read the imported teacher log-probs "
                         f"{cfg.teacher.cache_import} (top-{cache.get('topk')} at T = {cache.get('temperatures')}, no "
                         f"hidden states): {needs if isinstance(needs, str) else 'it needs ' + ', '.join(sorted(needs))}"
                         "; running the study's own teacher instead would distil another model")
    return out


def _trial_causal_cache(cfg, cache: dict) -> dict | None:
    from raykd.ray_layer.cache.builder import structural_layers

    needs = causal_needs(cfg.method.name, cfg.method.params)
    if cfg.teacher.cache == "none" or isinstance(needs, str) or not needs:
        return None
    have = ({"hidden"} if cache["layers"] else set()) | ({"logits"} if cache["topk"] else set())
    if not needs <= have:
        return None
    out = {"kind": "topk", "hidden": cache["hidden"], "layers": [], "topk": 0}
    if "hidden" in needs:
        out["layers"] = structural_layers(cache["teacher_layers"], cfg.student.layers, cfg.method.depth)
    if "logits" in needs:
        t = logit_temperature(cfg.method.name, cfg.method.params)
        if t not in cache["temperatures"]:
            return None
        out.update(topk=min(cfg.teacher.cache_topk, cache["topk"]), cached_topk=cache["topk"], temperature=t,
                   temperature_index=cache["temperatures"].index(t), temperatures=len(cache["temperatures"]))
    return out
