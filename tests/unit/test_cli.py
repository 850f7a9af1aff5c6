"""The one command line (``python -m raykd <verb>``), the older ``python -m raykd.X`` names and the public
names users' scripts import, all still working after the layout moved."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
VERBS = ("prepare", "synth", "adapt", "cache", "tune", "report", "export", "bench")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_help_lists_every_verb_and_an_unknown_verb_exits_2():
    out = run("-m", "raykd", "--help")
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(VERBS)
    bad = run("-m", "raykd", "distil")
    assert bad.returncode == 2 and "unknown verb 'distil'" in bad.stderr
    assert run("-m", "raykd").returncode == 2


def test_each_verb_reaches_its_command_and_the_older_names_still_work():
    for verb in VERBS:
        out = run("-m", "raykd", verb, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout, (verb, out.stderr[-500:])
    for module in ("raykd.data", "raykd.tune", "raykd.cache", "raykd.report", "raykd.export"):
        out = run("-m", module, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout, (module, out.stderr[-500:])
    dry = run("-m", "raykd", "tune", "--config", "search_spaces/smoke.yaml", "--dry-run")
    assert dry.returncode == 0 and "experiment smoke" in dry.stdout, dry.stderr[-800:]


def test_importing_the_cli_module_runs_nothing():
    out = run("-c", "import raykd.__main__ as m; print(sorted(m.VERBS))")
    assert out.returncode == 0 and out.stdout.strip() == str(sorted(VERBS))


def test_the_public_names_keep_working():
    import raykd

    assert callable(raykd.run_study) and callable(raykd.load_config)
    metrics = importlib.import_module("raykd.metrics")
    for name in ("semantic_alignment", "representation_compactness", "structural_consistency", "linear_cka",
                 "debiased_linear_cka", "qa_retrieval"):
        assert callable(getattr(metrics, name)), name
    losses = importlib.import_module("raykd.distill.losses")
    for name in ("forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "tvd"):
        assert callable(getattr(losses, name)), name
