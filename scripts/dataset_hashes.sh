# shellcheck shell=bash
# The archives' md5 list, shared by download_dataset.sh and verify_dataset.sh: source it to get the
# associative array `md5` (archive name -> md5). The official sums are the MLPerf reference's
# (mlcommons/training, retired_benchmarks/maskrcnn/download_dataset.sh); COCO_MD5_FILE, a list in
# md5sum's format ("<md5>  <name>" or "<md5> *<name>"), replaces entries of it. A malformed line is
# an error (exit 2): a silently ignored line would let an archive pass unchecked.

# shellcheck disable=SC2034  # md5 is what the sourcing scripts read
declare -A md5=()

read_hash_list() {  # read_hash_list SOURCE < LIST: add each "<md5>  <name>" line to md5
  local sum name line=0
  while read -r sum name; do
    line=$((line + 1))
    [[ -z "$sum" || "$sum" == \#* ]] && continue
    if [[ ! "$sum" =~ ^[0-9a-fA-F]{32}$ || -z "$name" ]]; then
      echo "$1:$line: not an md5 list line: $sum${name:+ $name}" >&2
      return 1
    fi
    md5[${name#\*}]="${sum,,}"
  done
}

read_hash_list "official list" <<'LIST'
f4bbac642086de4f52a3fdda2de5fa2c  annotations_trainval2017.zip
cced6f7f71b7629ddf16f17bbcfab6b2  train2017.zip
442b8da7639aecaf257c1dceb8ba8c80  val2017.zip
LIST
if [[ -n "${COCO_MD5_FILE:-}" ]]; then
  [[ -f "$COCO_MD5_FILE" ]] || { echo "COCO_MD5_FILE not found: $COCO_MD5_FILE" >&2; exit 2; }
  # the first argument only names the list in error messages
  # shellcheck disable=SC2094
  read_hash_list "$COCO_MD5_FILE" < "$COCO_MD5_FILE" || exit 2
fi
