"""A node's WAL on its own small file system (a tmpfs), so a campaign can fill it up.

PostgreSQL keeps WAL in ``pg_wal``, which may be a symbolic link to another
file system (what ``initdb --waldir`` sets up). Filling that file system is
the "WAL disk full" fault: the next WAL segment cannot be created and the
server stops with a PANIC until space is freed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from standby.lab.topology import NodeLayout

FILLER = "filler"


def mount_point(node: NodeLayout) -> Path:
    return node.dir / "waldisk"


def move_to_tmpfs(node: NodeLayout, size_mb: int) -> None:
    """Put ``pg_wal`` on a tmpfs of ``size_mb``. PostgreSQL must be stopped."""
    mnt, wal = mount_point(node), node.pgdata / "pg_wal"
    if wal.is_symlink():
        return  # already done
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mnt)], check=True,
                   capture_output=True, text=True)
    pg = pwd.getpwnam("postgres")
    for entry in wal.iterdir():
        shutil.move(str(entry), str(mnt / entry.name))  # a copy across file systems: owners are lost
    for path in [mnt, *mnt.rglob("*")]:
        os.lchown(path, pg.pw_uid, pg.pw_gid)
    wal.rmdir()
    wal.symlink_to(mnt)
    os.lchown(wal, pg.pw_uid, pg.pw_gid)
    # Recycled segments are renamed, not written anew: on a full disk the server
    # would go on for minutes on them. Without recycling (as on copy-on-write
    # file systems) the next segment needs new space at once.
    with (node.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\n# standby lab: WAL on a small tmpfs that a campaign may fill\nwal_recycle = off\n"
                   "max_wal_size = 256MB\n")  # checkpoints often enough that WAL stays well under the disk


def fill(node: NodeLayout) -> int:
    """Take every free byte of the WAL file system; returns how many. 0 if WAL is not on it (e.g. after a clone)."""
    mnt = mount_point(node)
    if not (node.pgdata / "pg_wal").is_symlink() or not os.path.ismount(mnt):
        return 0
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    fd = os.open(mnt / FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, free)
        except OSError:
            pass  # a few pages short: still full enough to stop the next segment
    finally:
        os.close(fd)
    return free


def free(node: NodeLayout) -> None:
    (mount_point(node) / FILLER).unlink(missing_ok=True)


def unmount_under(root: Path) -> None:
    """Unmount every file system mounted below ``root`` (a lab's tmpfs disks), deepest first."""
    root = root.resolve()
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    mine = [p for p in points if p.startswith(str(root) + "/")]
    for p in sorted(mine, key=len, reverse=True):
        subprocess.run(["umount", "-l", p], check=False, capture_output=True)
