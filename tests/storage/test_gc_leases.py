"""`gc` against real writer processes: a live writer's segment stays, a killed writer's goes once its lease
expired; stale temp files and expired document claims go too (on a disk and on S3), and `gc` says what it kept and
why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from actcache import actcache_cli
from actcache.storage import CacheWriter, open_cache, verify_cache
from actcache.storage.backends import open_backend
from actcache.storage.claims import TOMBSTONE_OWNER, Claim, ClaimBoard, Lease, segment_subject
from actcache.storage.commit_log import CommitLog
from actcache.storage.gc import collect_garbage
from actcache.storage.process_identity import process_start, this_machine
from storage_fixtures import WrittenCache, make_fingerprint, write_unit

LEASE_S = 1.0
# A writer process: claims and fills a segment, says which, then commits it when told to (or waits to be killed).
_WRITER = """
import sys
import numpy as np
from actcache.storage import CacheWriter, DocRecord
from actcache.storage.layout import activation_name
sys.path.insert(0, {fixtures!r})
from storage_fixtures import make_fingerprint
writer = CacheWriter.open({path!r}, make_fingerprint(), lease_s={lease})
docs = [DocRecord({unit!r} + "-doc", 64)]
segment = writer.begin_segment({unit!r}, docs, np.zeros(64, np.int32))
rows = writer.segment_writer(segment)
for name in rows._streams:
    rows.append(name, np.ones((64, writer.fingerprint.widths[name.split("/")[0]]), np.float32))
manifests = rows.close()
print(segment, flush=True)
sys.stdin.readline()
try:
    print("committed" if writer.commit({unit!r}, segment, docs, manifests) else "lost", flush=True)
except Exception as error:
    print(type(error).__name__, error, flush=True)
"""


def _start_writer(path: Path, unit: str) -> tuple[subprocess.Popen[str], str]:
    code = _WRITER.format(fixtures=str(Path(__file__).parent), path=str(path), lease=LEASE_S, unit=unit)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    segment = proc.stdout.readline().strip()
    assert segment, f"writer exited with {proc.wait()}"
    return proc, segment


def test_gc_keeps_a_live_writers_segment_and_removes_a_killed_ones_after_its_lease(
        written_cache: WrittenCache) -> None:
    alive, alive_segment = _start_writer(written_cache.path, "unit-alive")
    killed, killed_segment = _start_writer(written_cache.path, "unit-killed")
    board = ClaimBoard(CommitLog(open_backend(written_cache.path), "claims"))
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        report = collect_garbage(written_cache.path, older_than_s=0)  # killed, but its lease still runs
        assert report.segments == [] and "lease expires in" in report.kept[killed_segment]
        time.sleep(LEASE_S * 1.5)  # the killed writer's lease expires; the live one renews its own meanwhile
        report = collect_garbage(written_cache.path, older_than_s=0)
        assert report.segments == [killed_segment]
        assert f"its writer is alive (pid {alive.pid} on host" in report.kept[alive_segment]
        assert (written_cache.path / "segments" / alive_segment).is_dir()
        assert not (written_cache.path / "segments" / killed_segment).exists()
        assert board.get(segment_subject(killed_segment)) is None  # the expired claim went with it
        assert alive.stdin is not None and alive.stdout is not None
        alive.stdin.write("commit\n")
        alive.stdin.flush()
        assert alive.stdout.readline().strip() == "committed"
    finally:
        alive.kill()
        alive.wait()
    assert board.claims() == []  # released after the commit
    cache = open_cache(written_cache.path)
    assert cache.n_documents == len(written_cache.docs) + 1 and verify_cache(written_cache.path).ok


def test_a_writer_stalled_past_its_lease_refuses_to_commit(written_cache: WrittenCache) -> None:
    stalled, segment = _start_writer(written_cache.path, "unit-late")
    try:
        stalled.send_signal(signal.SIGSTOP)  # the whole process, its renewing thread too
        time.sleep(LEASE_S * 1.5)
        assert collect_garbage(written_cache.path, older_than_s=0).segments == [segment]
        stalled.send_signal(signal.SIGCONT)
        assert stalled.stdin is not None and stalled.stdout is not None
        stalled.stdin.write("commit\n")
        stalled.stdin.flush()
        outcome = stalled.stdout.readline()
    finally:
        stalled.kill()
        stalled.wait()
    assert outcome.startswith("CacheError this writer's claim on segment/") and "rerun" in outcome, outcome
    assert "unit-late" not in {r.unit_id for r in open_cache(written_cache.path).commit_records()}


def test_gc_removes_stale_temp_files_and_says_what_it_kept(written_cache: WrittenCache, capsys) -> None:
    stale = written_cache.path / "commits" / ".tmp-abc.json"  # a committer killed between write and link
    fresh = written_cache.path / "commits" / ".tmp-def.json"  # a committer at work right now
    partial = written_cache.path / "zarr.json.0123abcd.partial"  # zarr's own temp file
    folder = written_cache.path / ".annotations.tmp-999"  # a temp folder of a killed process
    (folder / "inner").mkdir(parents=True)
    for temp in (stale, fresh, partial, folder / "inner" / "x.json"):
        temp.write_text("{}")
    old = time.time() - 3600
    for temp in (stale, partial, folder):
        os.utime(temp, (old, old))
    writer = CacheWriter.open(written_cache.path, make_fingerprint())
    segment = write_unit(writer, "unit-busy", [8], np.random.default_rng(5),
                         WrittenCache(written_cache.path, [], {}, {}), commit=False)
    # a writer killed before creating its segment
    board = ClaimBoard(CommitLog(open_backend(written_cache.path), "claims"))
    assert board.try_claim(Claim("segment/never-made", "dead", "host", 1, time.time() - 1)) is None
    assert actcache_cli.main(["gc", str(written_cache.path), "--older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert "deleted 0 uncommitted segment(s)" in out
    assert "deleted 1 expired claim(s) of segments never created: segment/never-made" in out
    assert [c.subject for c in board.claims()] == [segment_subject(segment)]
    assert ("deleted 3 temp file(s) of killed writers: .annotations.tmp-999, commits/.tmp-abc.json, "
            "zarr.json.0123abcd.partial") in out
    assert f"kept {segment}: its writer is alive (pid {os.getpid()}" in out
    assert fresh.exists() and not stale.exists() and not partial.exists() and not folder.exists()
    writer.close()


def test_claims_are_exclusive_until_they_expire(tmp_path: Path) -> None:
    board = ClaimBoard(CommitLog(open_backend(tmp_path), "claims"))
    now = time.time()
    first = Claim("document/abc", "writer-1", "h1", 11, now + 60)
    second = Claim("document/abc", "writer-2", "h2", 22, now + 60)
    assert board.try_claim(first) is None
    assert board.try_claim(second) == first  # the live holder, named
    renewed = board.renew(first, now + 120)
    assert renewed is not None and board.get("document/abc") == renewed
    expired = Claim("document/abc", "writer-1", "h1", 11, now - 1)
    board.log.replace("document.abc.json", expired.to_dict())  # writer-1 stopped renewing long ago
    assert board.try_claim(second) is None and board.get("document/abc") == second  # taken over
    assert board.renew(first, now + 180) is None  # writer-1 learns it lost the claim
    board.release(first)  # and cannot release someone else's
    assert board.get("document/abc") == second
    board.release(second)
    assert board.get("document/abc") is None and board.claims() == []


def test_checks_during_renewals_never_see_a_live_claim_as_lost(tmp_path: Path) -> None:
    """On disk a renewal moves the record aside for a moment; a writer's own `check` racing it once failed a build
    under load with "claim ... was lost". Renew every 20 ms while checking in a loop: every check must pass."""
    lease = Lease(ClaimBoard(CommitLog(open_backend(tmp_path), "claims")), lease_s=0.06)
    subjects = [f"document/{i:02x}" for i in range(8)]
    for subject in subjects:
        lease.take(subject)
    deadline, checks = time.monotonic() + 1.5, 0
    try:
        while time.monotonic() < deadline:
            for subject in subjects:
                try:
                    lease.check(subject)
                except Exception as error:
                    assert "about to lapse" in str(error), error  # a starved renewal thread may lag; never "lost"
                checks += 1
    finally:
        lease.close()
    assert checks > 100


def _dead_pid() -> tuple[int, int]:
    """The pid and start time of a process of this machine that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid(), flush=True); input()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pid = int(child.stdout.readline())
    started = process_start(pid)
    child.kill()
    child.wait()
    assert started is not None and process_start(pid) != started
    return pid, started


@pytest.mark.parametrize("storage", ["disk", "s3"])
def test_gc_removes_expired_document_claims_and_never_a_live_or_taken_over_one(
        tmp_path: Path, storage: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    url = str(tmp_path / "cache") if storage == "disk" else f"{request.getfixturevalue('s3_url')}/cache"
    CacheWriter.open(url, make_fingerprint()).close()
    board = ClaimBoard(CommitLog(open_backend(url), "claims"))
    now = time.time()
    for subject, expires in (("document/0a", now - 5), ("document/0b", now - 5), ("document/0c", now + 600)):
        assert board.try_claim(Claim(subject, f"writer-{subject[-1]}", "h", 7, expires)) is None
    taker = Claim("document/0b", "taker", "h", 8, now + 600)  # a writer takes 0b over before gc runs
    assert board.try_claim(taker) is None
    assert collect_garbage(url, dry_run=True).document_claims == ["document/0a"]
    assert board.get("document/0a") is not None  # a dry run lists, removes nothing
    assert actcache_cli.main(["gc", url]) == 0
    assert "deleted 1 expired document claim(s) of dead writers: document/0a" in capsys.readouterr().out
    assert sorted(c.subject for c in board.claims()) == ["document/0b", "document/0c"]
    assert board.get("document/0b") == taker

    # between gc's swap and its delete the record is gc's tombstone: a writer waits for the delete instead of
    # swapping in a claim the delete would remove, unless gc's process is provably gone
    pid, started = _dead_pid()
    tombstone = Claim("document/0d", TOMBSTONE_OWNER, "h", os.getpid(), now + 600, this_machine(),
                      process_start(os.getpid()) or 0)
    board.log.put_if_absent("document.0d.json", tombstone.to_dict())
    assert board.try_claim(Claim("document/0d", "writer", "h", 9, now + 600)) == tombstone
    board.log.replace("document.0d.json", {**tombstone.to_dict(), "pid": pid, "started": started})
    taken: list[Claim] = []
    assert board.try_claim(Claim("document/0d", "writer", "h", 9, now + 600), taken) is None
    assert board.get("document/0d").owner == "writer" and [c.pid for c in taken] == [pid]
