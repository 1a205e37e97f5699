"""Readers never write: every reading command works on a read-only mount and with read-only S3 credentials.

The disk test mounts the cache read-only in a private mount namespace (`unshare -m`), since the tests run as root and
root ignores file modes. The S3 test runs its own moto server with IAM enforced (moto's `reset-auth`): the reading
commands run with the keys of a user whose policy allows only GetObject and ListBucket, and a write with them is
refused, which shows the enforcement is on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from s3_server import S3Server, running_s3_server

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTIMENT = REPO_ROOT / "tests" / "data" / "sentiment.jsonl"

# Every reading command on CACHE (outputs go to OUT, a writable folder), then the training loader and the text view.
_READS = """
import sys
from actcache.actcache_cli import main
from actcache.storage import open_cache
cache, out = sys.argv[1], sys.argv[2]
labels = ["--label-field", "sentiment", "--positive", "positive"]
for argv in (["info", cache, "--json"], ["verify", cache], ["stats", cache, "--hooks", "resid_post", "--layers", "1",
             "--out", f"{out}/stats.json"],
             ["solve", "--cache", cache, "--out", f"{out}/solve", *labels],
             ["sweep", "--cache", cache, "--out", f"{out}/sweep", *labels, "--methods", "caa", "--poolings", "last"],
             ["ls", cache.rpartition("/")[0], "--json"], ["cp", cache, f"{out}/copy", "--layers", "1"]):
    code = main([*argv, "--no-progress"] if argv[0] == "cp" else argv)
    assert code == 0, (argv, code)
reader = open_cache(cache)
rows = sum(len(batch["token_index"]) for batch in reader.tokens(hooks=["resid_post"], layers=[1], batch_size=64,
                                                              shuffle=True, seed=0))
assert rows == reader.n_tokens, (rows, reader.n_tokens)
assert all(reader.text(doc.key) for doc in reader.documents())
print("all reads ok")
"""


def _build(model_dir: Path, out: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "actcache.actcache_cli", "build", "--model", str(model_dir), "--corpus",
                    str(SENTIMENT), "--out", out, "--layers", "1,-1", "--no-progress"], check=True, env=env,
                   capture_output=True)


def _read_only_mount_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind / / && mount -o remount,ro,bind / /"], capture_output=True
    ).returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(), reason="needs `unshare -m` and mount rights for a read-only mount")
def test_every_reading_command_works_on_a_read_only_mount(tiny_sentiment_cache: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "lab" / "cache", tmp_path / "out"
    shutil.copytree(tiny_sentiment_cache, cache)
    out.mkdir()
    before = {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*")}
    mount = f"mount --bind {cache.parent} {cache.parent} && mount -o remount,ro,bind {cache.parent} {cache.parent}"

    def in_read_only_mount(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *argv],
                              capture_output=True, text=True)

    reads = in_read_only_mount(sys.executable, "-c", _READS, str(cache), str(out))
    assert reads.returncode == 0, reads.stderr
    assert "all reads ok" in reads.stdout
    write = in_read_only_mount(sys.executable, "-m", "actcache.actcache_cli", "tag", str(cache), "v1")
    assert write.returncode == 2 and "Read-only file system" in write.stderr, write.stderr
    assert len(write.stderr.strip().splitlines()) == 1, write.stderr
    assert {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*")} == before


def _read_only_keys(server: S3Server) -> dict[str, str]:
    """Keys of a new IAM user allowed only GetObject and ListBucket (created while moto does not check yet)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def test_every_reading_command_works_with_read_only_s3_credentials(tiny_llama_dir: Path, tmp_path: Path) -> None:
    with running_s3_server() as server:
        server.create_bucket("lab")
        env = {**os.environ, **server.env()}
        env.pop("AWS_PROFILE", None)
        cache = "s3://lab/caches/sentiment"
        _build(tiny_llama_dir, cache, env)
        reader_env = {**env, **_read_only_keys(server)}
        enforce = urllib.request.Request(f"{server.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(enforce, timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"

        reads = subprocess.run([sys.executable, "-c", _READS, cache, str(tmp_path)], capture_output=True, text=True,
                               env=reader_env)
        assert reads.returncode == 0, reads.stderr
        assert "all reads ok" in reads.stdout
        write = subprocess.run([sys.executable, "-m", "actcache.actcache_cli", "tag", cache, "v1"],
                               capture_output=True, text=True, env=reader_env)
        assert write.returncode == 2 and "S3 refused access" in write.stderr, write.stderr
        assert len(write.stderr.strip().splitlines()) == 1, write.stderr
