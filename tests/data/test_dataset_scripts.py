"""scripts/download_dataset.sh and scripts/verify_dataset.sh against a local file:// mirror."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from harness.data.verify import check_weights
from tests.data.conftest import TRAIN, VAL

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
ARCHIVES = {
    "train2017.zip": ("zips", ["train2017"]),
    "val2017.zip": ("zips", ["val2017"]),
    "annotations_trainval2017.zip": ("annotations", ["annotations"]),
}


def _zip(src_root: Path, dirs: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as zf:
        for d in dirs:
            for path in sorted((src_root / d).iterdir()):
                zf.write(path, f"{d}/{path.name}")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path, tiny_coco, fake_r50) -> tuple[Path, dict]:
    """A mirror laid out like images.cocodataset.org, its md5 list and the scripts' environment."""
    root = tmp_path / "mirror"
    for name, (sub, dirs) in ARCHIVES.items():
        _zip(tiny_coco, dirs, root / sub / name)
    shutil.copy(fake_r50, root / "R-50.pkl")
    md5_file = tmp_path / "md5.txt"
    md5_file.write_text(
        "".join(f"{_md5(root / sub / name)}  {name}\n" for name, (sub, _) in ARCHIVES.items())
    )
    env = os.environ | {
        "COCO_MIRROR": f"file://{root}",
        "COCO_MD5_FILE": str(md5_file),
        "R50_URL": f"file://{root}/R-50.pkl",
        "EXPECT_TRAIN_IMAGES": str(TRAIN),
        "EXPECT_VAL_IMAGES": str(VAL),
    }
    return root, env


def _run(script: str, datadir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), str(datadir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _lines(result: subprocess.CompletedProcess, prefix: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(prefix)]


def test_download_then_verify_passes_and_second_run_downloads_nothing(tmp_path, mirror):
    root, env = mirror
    data = tmp_path / "data"
    first = _run("download_dataset.sh", data, env)
    assert first.returncode == 0, first.stderr
    assert len(list((data / "coco/train2017").glob("*.jpg"))) == TRAIN
    assert len(list((data / "coco/val2017").glob("*.jpg"))) == VAL
    for split in ("train2017", "val2017"):
        json.loads((data / f"coco/annotations/instances_{split}.json").read_text())
    assert (data / "R-50.pkl").read_bytes() == (root / "R-50.pkl").read_bytes()

    shutil.rmtree(root)  # a second run that tried to download anything would now fail
    second = _run("download_dataset.sh", data, env)
    assert second.returncode == 0, second.stderr
    assert "downloading" not in second.stdout
    assert second.stdout.count("already extracted") == 3

    digest = hashlib.sha256((data / "R-50.pkl").read_bytes()).hexdigest()
    verify = _run("verify_dataset.sh", data, env | {"R50_SHA256": digest})
    assert verify.returncode == 0, verify.stdout
    assert verify.stdout.count("PASSED  md5") == 3
    assert f"PASSED  decode train2017 ({TRAIN} images decode at their annotated sizes)" in (
        verify.stdout
    )
    [weights] = _lines(verify, "PASSED  R-50.pkl")
    assert "every ResNet-50 blob present; sha256 matches" in weights
    assert "FAILED" not in verify.stdout and verify.stdout.rstrip().endswith("PASSED")


def test_download_resumes_a_partial_archive(tmp_path, mirror):
    root, env = mirror
    data = tmp_path / "data"
    served = root / "zips" / "val2017.zip"
    good = served.read_bytes()
    half = len(good) // 2
    (data / "downloads").mkdir(parents=True)
    (data / "downloads" / "val2017.zip.part").write_bytes(good[:half])
    # The mirror's first half is now wrong: only a resumed download still matches the md5.
    served.write_bytes(bytes(half) + good[half:])
    result = _run("download_dataset.sh", data, env)
    assert result.returncode == 0, result.stderr
    assert (data / "downloads" / "val2017.zip").read_bytes() == good


def test_download_rejects_an_archive_with_the_wrong_md5(tmp_path, mirror):
    root, env = mirror
    served = root / "zips" / "val2017.zip"
    served.write_bytes(served.read_bytes() + b"x")
    data = tmp_path / "data"
    result = _run("download_dataset.sh", data, env)
    assert result.returncode != 0
    assert "val2017.zip: md5 mismatch" in result.stderr
    assert not (data / "downloads" / "val2017.zip").exists()
    assert not (data / "coco" / "val2017").exists()


def test_verify_reports_each_damaged_item(tmp_path, mirror):
    _, env = mirror
    data = tmp_path / "data"
    assert _run("download_dataset.sh", data, env).returncode == 0
    archive = data / "downloads" / "train2017.zip"
    archive.write_bytes(archive.read_bytes()[:-1])
    next((data / "coco/val2017").glob("*.jpg")).unlink()
    (data / "coco/annotations/instances_train2017.json").write_text("{not json")
    (data / "R-50.pkl").unlink()
    result = _run("verify_dataset.sh", data, env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAILED  md5 train2017.zip") for line in lines)
    assert any(line.startswith("PASSED  md5 val2017.zip") for line in lines)
    assert any(
        line.startswith(f"FAILED  images val2017 (expected {VAL}, found {VAL - 1})")
        for line in lines
    )
    assert any(line.startswith("FAILED  annotations instances_train2017.json") for line in lines)
    assert any(line.startswith("PASSED  annotations instances_val2017.json") for line in lines)
    assert any(line.startswith("FAILED  R-50.pkl") for line in lines)


def test_verify_fails_on_the_official_counts_and_a_missing_tree(tmp_path):
    result = _run("verify_dataset.sh", tmp_path / "empty", os.environ | {"SKIP_R50": "1"})
    assert result.returncode == 1
    assert "FAILED  images train2017" in result.stdout
    assert "SKIPPED  md5 train2017.zip (not present)" in result.stdout


def test_verify_fails_on_corrupt_images_and_weights_whose_archives_pass(tmp_path, mirror):
    _, env = mirror
    data = tmp_path / "data"
    assert _run("download_dataset.sh", data, env).returncode == 0
    truncated = sorted((data / "coco/train2017").glob("*.jpg"))[3]
    truncated.write_bytes(truncated.read_bytes()[:300])
    empty = sorted((data / "coco/val2017").glob("*.jpg"))[5]
    empty.write_bytes(b"")
    (data / "R-50.pkl").write_bytes(b"123456789")  # 9 bytes passed the old non-empty check
    result = _run("verify_dataset.sh", data, env)
    assert result.returncode == 1
    assert result.stdout.count("PASSED  md5") == 3  # the downloads were fine
    [line] = _lines(result, "FAILED  decode train2017")
    assert f"1 of {TRAIN} images are bad: corrupt image {truncated}: " in line
    [line] = _lines(result, "FAILED  decode val2017")
    assert f"1 of {VAL} images are bad: corrupt image {empty}: " in line
    [line] = _lines(result, "FAILED  R-50.pkl")
    assert "not a Caffe2 weights pickle" in line


def test_weights_check_names_a_missing_blob_and_compares_the_digest(tmp_path, fake_r50):
    digest = hashlib.sha256(fake_r50.read_bytes()).hexdigest()
    passed, detail = check_weights(fake_r50)
    assert passed and f"sha256 {digest} (no digest to compare)" in detail
    assert check_weights(fake_r50, digest.upper()) == (
        True,
        detail.replace(f"sha256 {digest} (no digest to compare)", "sha256 matches"),
    )
    assert check_weights(fake_r50, "0" * 64) == (False, f"sha256 expected {'0' * 64}, got {digest}")
    blobs = pickle.loads(fake_r50.read_bytes(), encoding="latin1")["blobs"]
    del blobs["res4_5_branch2c_w"]
    cut = tmp_path / "R-50.pkl"
    cut.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    passed, detail = check_weights(cut)
    assert not passed and "missing keys (1): res4_5_branch2c_w" in detail


@pytest.mark.parametrize("script", ["download_dataset.sh", "verify_dataset.sh"])
def test_both_scripts_read_the_hash_list_with_one_parser(tmp_path, mirror, script):
    _, env = mirror
    env |= {"SKIP_R50": "1"}
    data = tmp_path / "data"
    assert _run("download_dataset.sh", data, env).returncode == 0
    listed = Path(env["COCO_MD5_FILE"]).read_text().splitlines()
    # md5sum -b writes "<md5> *<name>", in capitals on some systems: the same sums.
    binary = tmp_path / "binary.md5"
    binary.write_text("".join(f"{line[:32].upper()} *{line[34:]}\n" for line in listed))
    result = _run(script, data, env | {"COCO_MD5_FILE": str(binary)})
    assert result.returncode == 0, result.stdout + result.stderr
    if script == "download_dataset.sh":
        assert result.stdout.count("already extracted") == 3
    else:
        assert result.stdout.count("PASSED  md5") == 3
    # A line that is not "<md5> <name>" is refused, not skipped, before anything is written.
    bad = tmp_path / "bad.md5"
    bad.write_text(listed[0] + "\nd41d8cd98f00b204e9800998ecf8427e\n")
    result = _run(script, tmp_path / "other", env | {"COCO_MD5_FILE": str(bad)})
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"{bad}:2: not an md5 list line: d41d8cd98f00b204e9800998ecf8427e"
    )
    assert not (tmp_path / "other").exists()
