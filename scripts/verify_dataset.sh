#!/usr/bin/env bash
# Verify what scripts/download_dataset.sh produced in DATADIR before any run: the archives' md5
# (where they are present), the extracted tree (image counts, annotation files that parse and list as
# many images, every image decoding at its annotated size with the loaders' own reader) and R-50.pkl
# (a Caffe2 pickle holding every ResNet-50 blob with the right shape; its sha256 when R50_SHA256 is
# given: no official digest of it is published). Prints PASSED, FAILED or SKIPPED per item; exits 1
# when anything FAILED. The md5 of an archive proves the download, not the extracted files: a file
# damaged since (a full disk, a bad copy) shows only in the decode check.
#
# Environment (for tests and other datasets):
#   COCO_MD5_FILE        md5sum-format list replacing the official hashes (scripts/dataset_hashes.sh)
#   EXPECT_TRAIN_IMAGES  expected train2017 images (default 118287)
#   EXPECT_VAL_IMAGES    expected val2017 images (default 5000)
#   R50_SHA256           expected sha256 of R-50.pkl (default: none, the structure is checked)
#   SKIP_R50=1           do not check R-50.pkl
#   PYTHON               interpreter with the harness's packages (default: the repository's .venv,
#                        else python3)
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DATADIR" >&2; exit 2; }
datadir="$1"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/dataset_hashes.sh"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
failed=0
report() {  # report STATUS ITEM [DETAIL]
  echo "$1  $2${3:+ ($3)}"
  [[ "$1" == FAILED ]] && failed=1
  return 0
}

for name in annotations_trainval2017.zip train2017.zip val2017.zip; do
  archive="$datadir/downloads/$name"
  if [[ ! -f "$archive" ]]; then
    report SKIPPED "md5 $name" "not present"
    continue
  fi
  got="$(md5sum "$archive" | cut -d' ' -f1)"
  if [[ "$got" == "${md5[$name]}" ]]; then
    report PASSED "md5 $name"
  else
    report FAILED "md5 $name" "expected ${md5[$name]}, got $got"
  fi
done

for split in train2017 val2017; do
  if [[ $split == train2017 ]]; then want="${EXPECT_TRAIN_IMAGES:-118287}"; else want="${EXPECT_VAL_IMAGES:-5000}"; fi
  dir="$datadir/coco/$split"
  if [[ -d "$dir" ]]; then
    have="$(find "$dir" -maxdepth 1 -name '*.jpg' | wc -l)"
    if [[ "$have" -eq "$want" ]]; then
      report PASSED "images $split" "$have"
    else
      report FAILED "images $split" "expected $want, found $have"
    fi
  else
    report FAILED "images $split" "directory $dir missing"
  fi
  ann="$datadir/coco/annotations/instances_$split.json"
  if detail="$("$python" - "$ann" "$want" 2>&1 <<'PY'
import json, sys
path, want = sys.argv[1], int(sys.argv[2])
try:
    with open(path) as f:
        doc = json.load(f)
    listed = len(doc["images"])
    count = len(doc["annotations"])
    _ = doc["categories"]
except (OSError, ValueError, KeyError, TypeError) as exc:
    print(f"does not parse: {type(exc).__name__}: {exc}")
    sys.exit(1)
if listed != want:
    print(f"lists {listed} images, expected {want}")
    sys.exit(1)
print(f"{listed} images, {count} annotations")
PY
)"; then
    report PASSED "annotations instances_$split.json" "$detail"
  else
    report FAILED "annotations instances_$split.json" "$detail"
  fi
done

# Every image decoded, and R-50.pkl read, by the harness's own code (one process: torch loads once).
weights=()
[[ "${SKIP_R50:-0}" == 1 ]] || weights=(--weights "$datadir/R-50.pkl" --sha256 "${R50_SHA256:-}")
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m harness.data.verify "$datadir" \
  "${weights[@]}"
case $? in
  0) ;;
  1) failed=1 ;;
  *) report FAILED "decode and weights checks" "$python -m harness.data.verify failed; see above" ;;
esac

if [[ $failed -ne 0 ]]; then
  echo "verify_dataset: FAILED"
  exit 1
fi
echo "verify_dataset: PASSED"
