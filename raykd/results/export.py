"""R: ``python -m raykd.export EXPERIMENT_DIR [--trial best|ID] --out DIR`` — the chosen student as a
standalone Hugging Face model directory.

Writes (atomically) the student's masked-LM encoder (``model.safetensors`` + ``config.json``; loads
with ``transformers.AutoModel`` / ``AutoModelForMaskedLM``, no raykd, no remote code), its
tokenizer, and for students with the multi-granularity aggregation ``aggregation.safetensors`` +
``aggregation.json`` (the sentence representation Y; the model card gives the 15 lines of torch that
apply it). Training-only parts (projections, fusion adapter, dynamic weights) are dropped. The
``README.md`` model card holds the trial's configuration, validation and test metrics, teacher and
data provenance, and efficiency vs the teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from raykd.atomic import atomic_directory
from raykd.errors import RaykdError
from raykd.results.report import TrialRecord, experiment_metric, load_experiment


def choose_trial(exp_dir: str | Path, which: str = "best") -> TrialRecord:
    """The trial to export: ``best`` = the finished trial with the best final validation metric of
    the experiment (never a test metric), or the trial with id ``which``."""
    trials = load_experiment(exp_dir)
    if which != "best":
        for t in trials:
            if t.trial_id == which or Path(t.path).name == which:
                if t.steps == 0:
                    raise RaykdError(f"trial {which}: has no checkpoint yet (status {t.status})")
                return t
        raise RaykdError(f"trial {which}: not in {exp_dir} (trials: {', '.join(t.trial_id for t in trials)})")
    metric, mode = experiment_metric(trials)
    done = [t for t in trials if t.status == "finished" and t.metrics.get(metric) == t.metrics.get(metric)
            and t.metrics.get(metric) is not None]
    if not done:
        raise RaykdError(f"{exp_dir}: no finished trial with {metric} to export (use --trial ID)")
    return (max if mode == "max" else min)(done, key=lambda t: t.metrics[metric])


def latest_checkpoint(trial: TrialRecord) -> Path:
    """The trial's most recent checkpoint directory (the one its final metrics were reported with):
    under ``train/`` for a worker-group trial (Train keeps them), in the trial directory itself for a
    Train-local-mode trial (Tune keeps them)."""
    ckpts = [p for pattern in ("train/*/checkpoint_*", "checkpoint_*") for p in Path(trial.path).glob(pattern)
             if (p / "model.safetensors").exists()]
    if not ckpts:
        raise RaykdError(f"trial {trial.trial_id}: no checkpoint under {trial.path} (train/*/ or the trial directory)")
    return max(ckpts, key=lambda p: (p.stat().st_mtime, p.name))


def load_trial_student(trial: TrialRecord, checkpoint: Path | None = None):
    """(raykd Student with the checkpoint's weights, provenance dict, prepared-data manifest).
    Raises RaykdError when the checkpoint does not fit the trial's architecture."""
    from safetensors.torch import load_model

    from raykd import config as C
    from raykd.data.shards import load_manifest
    from raykd.distill.methods import build_method
    from raykd.models.student import manifest_tokens, student_for
    from raykd.models.teacher import load_teacher
    from raykd.train.trial_spec import method_kwargs

    prov = json.loads(Path(trial.path, "provenance.json").read_text())
    for key in ("teacher", "prepared"):
        if not prov.get(key):
            raise RaykdError(f"trial {trial.trial_id}: provenance.json lacks '{key}' (written by an older raykd)")
    cfg = C._build(C.Config, prov["config"], "", f"{trial.path}/provenance.json")
    manifest = load_manifest(prov["prepared"])
    t = prov["config"].get("teacher", {})
    teacher = load_teacher(prov["teacher"], **({"trust_remote_code": t.get("trust_remote_code", False),
                                                "revision": t.get("revision")} if not t.get("adapt") else {}),
                           family=t.get("family"))
    kwargs, aggregation = method_kwargs(cfg, len(manifest["departments"]))
    student = student_for(teacher, cfg.student, aggregation, init_from_teacher=False,
                          tokens=manifest_tokens(manifest) if prov.get("teacher_view") else None)
    method = build_method(cfg.method.name, student, teacher.config, **kwargs)
    ckpt = checkpoint or latest_checkpoint(trial)
    try:
        load_model(method, str(ckpt / "model.safetensors"), strict=True, device="cpu")
    except RuntimeError as e:
        raise RaykdError(f"{ckpt}/model.safetensors: does not fit the trial's architecture "
                         f"({str(e).splitlines()[0][:200]})") from None
    return method.student.eval(), prov, manifest, teacher


def export(exp_dir: str | Path, out: str | Path, which: str = "best") -> dict:
    """Export the chosen trial's student into ``out``; returns {trial_id, out, files}."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    trial = choose_trial(exp_dir, which)
    ckpt = latest_checkpoint(trial)
    student, prov, manifest, teacher = load_trial_student(trial, ckpt)
    out = Path(out).absolute()
    with atomic_directory(out) as tmp:
        if student.family.spec.has("generates"):  # generate() stops and pads as in training
            t = manifest["tokenizer"]
            student.mlm.generation_config.eos_token_id = t.get("eos_token_id", student.mlm.config.eos_token_id)
            student.mlm.generation_config.pad_token_id = t.get("pad_token_id")
        student.family.save(student.mlm, tmp)
        AutoTokenizer.from_pretrained(os.path.join(prov["prepared"], "tokenizer")).save_pretrained(tmp)
        if student.aggregation is not None:
            agg = {k: v.detach().contiguous() for k, v in student.aggregation.state_dict().items()}
            save_file(agg, str(tmp / "aggregation.safetensors"))
            (tmp / "aggregation.json").write_text(json.dumps({"widths": list(student.aggregation.widths)}))
        (tmp / "README.md").write_text(model_card(trial, prov, manifest, teacher, ckpt, student), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
    return {"trial_id": trial.trial_id, "out": str(out), "files": files, "checkpoint": str(ckpt)}


AGGREGATION_CODE = '''import json, torch, torch.nn.functional as F
from safetensors.torch import load_file

def sentence_representation(model_dir, last_hidden, mask):
    """Y [b, d] from the encoder's last hidden state [b, t, d] and attention mask [b, t]."""
    w = load_file(f"{model_dir}/aggregation.safetensors")
    widths = json.load(open(f"{model_dir}/aggregation.json"))["widths"]
    m = mask.to(last_hidden.dtype)
    token = (last_hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    views = [token]
    for k in widths:  # phrase views: mean of the fully-inside windows of k tokens
        if last_hidden.shape[1] < k:
            views.append(token); continue
        win = F.avg_pool1d((last_hidden * m[..., None]).transpose(1, 2), k, stride=1).transpose(1, 2)
        full = (F.avg_pool1d(m[:, None, :], k, stride=1).transpose(1, 2) > 0.999).to(last_hidden.dtype)
        phrase = (win * full).sum(1) / full.sum(1).clamp_min(1.0)
        views.append(torch.where(full.sum(1) == 0, token, phrase))
    views.append(last_hidden[:, 0])  # sentence view: [CLS]
    v = torch.stack(views, 1)
    s = torch.tanh(v @ w["score.0.weight"].T + w["score.0.bias"]) @ w["score.2.weight"].T
    return (torch.softmax(s.squeeze(-1), -1)[..., None] * v).sum(1)
'''


def model_card(trial: TrialRecord, prov: dict, manifest: dict, teacher, ckpt: Path, student) -> str:
    """The exported model's README.md (Markdown)."""
    cfg = prov["config"]
    m = trial.metrics
    rows = sorted(k.split("/", 1)[1] for k in m if k.startswith("val/"))
    metric_lines = ["| metric | validation | test |", "|---|---|---|"]
    for k in rows:
        metric_lines.append(f"| {k} | {_num(m.get('val/' + k))} | {_num(m.get('test/' + k))} |")
    eff = [f"| {k.split('/', 1)[1]} | {_num(v)} |" for k, v in sorted(m.items())
           if k.startswith("test/") and any(s in k for s in ("params", "latency", "speedup", "decode", "reduction"))]
    intro = student.family.card_intro(student, teacher, cfg["method"]["name"])
    if intro is None:
        intro = _causal_intro(trial, cfg, teacher, student, prov) if student.family.spec.has("generates") \
            else _encoder_intro(cfg, teacher, student)
    splits = manifest.get("splits", {})
    lines = [
        "---", "library_name: transformers", "tags: [knowledge-distillation, raykd, medical-dialogue]", "---", "",
        f"# raykd student `{trial.trial_id}`", "", *intro]
    lines += [
        "## Trial", "",
        f"- searched parameters: `{json.dumps(trial.params, sort_keys=True)}`, seed {trial.seed}",
        f"- steps: {trial.steps}; status: {trial.status}; checkpoint: `{ckpt.name}`",
        f"- experiment metric: `{cfg['experiment']['metric']}` ({cfg['experiment']['mode']}), selected on validation",
        "", "<details><summary>Resolved configuration</summary>", "", "```json",
        json.dumps({k: cfg[k] for k in ("student", "method", "sampler", "train") if k in cfg}, indent=1),
        "```", "</details>", "",
        "## Metrics (student alone; test evaluated once)", "", *metric_lines, "",
        "## Efficiency vs the teacher (measured at the end of the trial, on its worker)", "",
        "| quantity | value |", "|---|---|", *eff, "",
        "## Provenance", "",
        f"- teacher: `{cfg['teacher'].get('spec') or 'built from config'}`"
        f"{' (domain-adapted)' if cfg['teacher'].get('adapt') else ''}, key `{prov['teacher_key']}`",
        f"- data: prepared key `{prov['data_key']}`, tokenizer `{manifest['tokenizer'].get('spec', '')}` "
        f"(vocabulary {manifest['tokenizer'].get('vocab_size', '?')}), max length {manifest['max_length']}; "
        + ", ".join(f"{s} {v.get('rows', '?')} pairs" for s, v in splits.items()),
        *([f"- distilled across tokenizers: the teacher read its own `{cfg['teacher'].get('tokenizer')}` (vocabulary "
           f"{prov['teacher_view'].get('vocab', '?')}); this student's embeddings and head are its own, for the "
           "tokenizer saved here"] if prov.get("teacher_view") else []),
        f"- raykd {prov.get('raykd')} (git {prov.get('git_sha') or '?'}), torch {prov.get('torch')}, "
        f"ray {prov.get('ray')}, transformers {prov.get('transformers')}",
        "",
    ]
    return "\n".join(lines)


def _causal_intro(trial: TrialRecord, cfg: dict, teacher, student, prov: dict) -> list[str]:
    """The card's opening for a causal student: the claim numbers and how to generate with it."""
    from transformers import AutoTokenizer

    from raykd.data.template import PLAIN, causal_template

    m = trial.metrics
    kind = causal_template(AutoTokenizer.from_pretrained(os.path.join(prov["prepared"], "tokenizer"))).kind
    prompt = ('text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, '
              'add_generation_prompt=True)') if kind == "chat" else \
        f'text = (tok.bos_token or "") + {PLAIN[0]!r} + question + {PLAIN[1]!r}'
    return [
        f"A {student.config.num_hidden_layers}-layer, {student.config.hidden_size}-wide causal LM "
        f"(`{type(student.mlm).__name__}`) distilled by raykd (`{cfg['method']['name']}`) from a "
        f"{teacher.config.num_hidden_layers}-layer, {teacher.config.hidden_size}-wide teacher. On the test split: "
        f"retained accuracy above chance **{_num(m.get('test/retained_accuracy_above_chance'))}** = (student − chance)"
        f" ÷ (teacher − chance): answer selection {_num(m.get('test/answer_accuracy'))} vs the teacher's "
        f"{_num(m.get('test/teacher_answer_accuracy'))}, chance {_num(m.get('test/answer_chance'))} (plain student ÷ "
        f"teacher: {_num(m.get('test/retained_accuracy'))}, which an untrained student already scores chance ÷ "
        f"teacher of), parameter reduction "
        f"**{_num(m.get('test/param_reduction'))}**, prefill speedup {_num(m.get('test/speedup_b1'))}× (batch 1) / "
        f"{_num(m.get('test/speedup_b32'))}× (batch 32), response perplexity {_num(m.get('test/perplexity'))} "
        f"(teacher {_num(m.get('test/teacher_perplexity'))}). Load it with plain transformers (no remote code):", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(DIR); model = AutoModelForCausalLM.from_pretrained(DIR)",
        "question = \"最近总是头痛，需要做什么检查？\"", prompt,
        "ids = tok(text, add_special_tokens=False, return_tensors=\"pt\")",
        "out = model.generate(**ids, max_new_tokens=64, do_sample=False)",
        "print(tok.decode(out[0, ids[\"input_ids\"].shape[1]:], skip_special_tokens=True))", "```", "",
        f"Prompt format ({kind} template, as in training): the patient's turn is the prompt, the doctor's the "
        "response; every metric scores the response tokens only.", ""]


def _encoder_intro(cfg: dict, teacher, student) -> list[str]:
    """The card's opening for an encoder student: how to load it and what its representation is."""
    y_text = ("Y = the mean of the last hidden state over content tokens (no [CLS], [SEP], padding or other "
              "special tokens), the same for every student and the teacher.")
    if student.aggregation is not None:
        y_text += (" This student also has its own multi-granularity aggregation of the last hidden state (token "
                   "mean, phrase windows, [CLS], attention-fused; the metrics ending `_aggregated`): apply it with "
                   "the code below.")
    lines = [
        f"A {student.config.num_hidden_layers}-layer, {student.config.hidden_size}-wide BERT encoder distilled by "
        f"raykd (`{cfg['method']['name']}`) from a {teacher.config.num_hidden_layers}-layer teacher. "
        "Load it with plain transformers (no remote code):", "",
        "```python", "from transformers import AutoModel, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(DIR); model = AutoModel.from_pretrained(DIR)", "```", "",
        f"Sentence representation (what every metric below measures): {y_text}", "",
    ]
    if student.aggregation is not None:
        lines += ["```python", AGGREGATION_CODE.rstrip(), "```", ""]
    return lines


def _num(v) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit code (0 exported, 2 bad input)."""
    ap = argparse.ArgumentParser(prog="python -m raykd.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="experiment directory (STORAGE/NAME)")
    ap.add_argument("--trial", default="best", help="best (validation metric) or a trial id")
    ap.add_argument("--out", required=True, help="output model directory")
    args = ap.parse_args(argv)
    try:
        r = export(args.experiment, args.out, args.trial)
    except RaykdError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"exported trial {r['trial_id']} → {r['out']} ({', '.join(r['files'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
