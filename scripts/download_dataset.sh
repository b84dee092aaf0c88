#!/usr/bin/env bash
# Download COCO 2017 (train/val images + annotations) and the Detectron R-50.pkl backbone into DATADIR:
#
#   DATADIR/downloads/{train2017,val2017,annotations_trainval2017}.zip   the archives (kept for verify)
#   DATADIR/coco/{train2017,val2017}/, DATADIR/coco/annotations/instances_{train,val}2017.json
#   DATADIR/R-50.pkl
#
# Resumable (partial downloads continue with curl -C -) and idempotent (an archive whose md5 matches is
# not fetched again; an archive already extracted is not extracted again). Each archive's md5 is checked
# before extraction; a mismatch deletes the archive and fails.
#
# Environment (for mirrors and offline tests):
#   COCO_MIRROR    base URL with zips/ and annotations/ below it (default http://images.cocodataset.org)
#   COCO_MD5_FILE  md5sum-format list "<md5>  <archive name>" replacing the official hashes
#                  (scripts/dataset_hashes.sh holds them and the parser verify_dataset.sh shares)
#   R50_URL        URL of R-50.pkl (default: Detectron's ImageNetPretrained/MSRA path)
#   SKIP_R50=1     do not fetch R-50.pkl
set -euo pipefail

usage() { echo "usage: $0 DATADIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
datadir="$1"
mirror="${COCO_MIRROR:-http://images.cocodataset.org}"
r50_url="${R50_URL:-https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl}"
downloads="$datadir/downloads"
coco="$datadir/coco"
# shellcheck source=scripts/dataset_hashes.sh
source "$(dirname "${BASH_SOURCE[0]}")/dataset_hashes.sh"
mkdir -p "$downloads" "$coco"
declare -A remote=(
  [annotations_trainval2017.zip]="$mirror/annotations/annotations_trainval2017.zip"
  [train2017.zip]="$mirror/zips/train2017.zip"
  [val2017.zip]="$mirror/zips/val2017.zip"
)

fetch() {  # fetch URL FILE: resume into FILE.part, then rename
  local url="$1" file="$2"
  echo "downloading $url"
  curl -fL --retry 3 -C - -o "$file.part" "$url"
  mv "$file.part" "$file"
}

md5_ok() { [[ "$(md5sum "$1" | cut -d' ' -f1)" == "$2" ]]; }

for name in annotations_trainval2017.zip val2017.zip train2017.zip; do
  archive="$downloads/$name"
  marker="$coco/.extracted-${name%.zip}"
  if [[ -f "$marker" && "$(cat "$marker")" == "${md5[$name]}" ]]; then
    echo "$name: already extracted"
    continue
  fi
  if [[ -f "$archive" ]] && md5_ok "$archive" "${md5[$name]}"; then
    echo "$name: already downloaded"
  else
    rm -f "$archive"
    fetch "${remote[$name]}" "$archive"
    if ! md5_ok "$archive" "${md5[$name]}"; then
      echo "$name: md5 mismatch (expected ${md5[$name]}, got $(md5sum "$archive" | cut -d' ' -f1)); deleted" >&2
      rm -f "$archive"
      exit 1
    fi
  fi
  echo "extracting $name"
  unzip -q -o "$archive" -d "$coco"
  echo "${md5[$name]}" > "$marker"
done

if [[ "${SKIP_R50:-0}" != 1 ]]; then
  if [[ -s "$datadir/R-50.pkl" ]]; then
    echo "R-50.pkl: already downloaded"
  else
    fetch "$r50_url" "$datadir/R-50.pkl"
  fi
fi
echo "done: $coco"
