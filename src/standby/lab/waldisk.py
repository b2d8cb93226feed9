"""A node's WAL on its own small file system, so a campaign can fill it up or a test can hang it.

PostgreSQL keeps WAL in ``pg_wal``, which may be a symbolic link to another
file system (what ``initdb --waldir`` sets up). Filling that file system is
the "WAL disk full" fault: the next WAL segment cannot be created and the
server stops with a PANIC until space is freed. Freezing it (``fsfreeze``, on
an ext4 in a file behind a loop device: a tmpfs cannot be frozen) is the "hung
disk" fault: every write to it waits, uninterruptibly (state D), until the
thaw, while everything the server keeps in memory still answers.
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
    _move(node, ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs"])


def move_to_loop_ext4(node: NodeLayout, size_mb: int) -> None:
    """Put ``pg_wal`` on an ext4 of ``size_mb`` in a file beside the node (a loop device), which ``freeze``
    can hang. PostgreSQL must be stopped. The loop device goes with the unmount (the mount's autoclear)."""
    image = node.dir / "waldisk.img"
    with image.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)  # sparse: costs the machine what is written only
    # -m 0: no blocks reserved for root, so the disk is as full for PostgreSQL as `fill` makes it.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True, text=True)
    _move(node, ["mount", "-o", "loop", str(image)])


def _move(node: NodeLayout, mount: list[str]) -> None:
    mnt, wal = mount_point(node), node.pgdata / "pg_wal"
    if wal.is_symlink():
        return  # already done
    mnt.mkdir(exist_ok=True)
    subprocess.run([*mount, str(mnt)], check=True, capture_output=True, text=True)
    os.chmod(mnt, 0o700)
    if (mnt / "lost+found").is_dir():
        (mnt / "lost+found").rmdir()  # an ext4's: pg_wal holds PostgreSQL's files only (a rewind copies it)
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
        conf.write("\n# standby lab: WAL on a small file system that a campaign may fill\nwal_recycle = off\n"
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


def freeze(node: NodeLayout) -> bool:
    """Hang every write to the node's WAL file system (``fsfreeze``); False if WAL is not on one that can be."""
    mnt = mount_point(node)
    if not os.path.ismount(mnt):
        return False
    return subprocess.run(["fsfreeze", "--freeze", str(mnt)], check=False, capture_output=True).returncode == 0


def thaw(node: NodeLayout) -> None:
    """Let the writes that waited go on (a file system not frozen is left as it is)."""
    subprocess.run(["fsfreeze", "--unfreeze", str(mount_point(node))], check=False, capture_output=True)


def unmount_under(root: Path) -> None:
    """Unmount every file system mounted below ``root`` (a lab's WAL disks), deepest first. A frozen one is
    thawed first: unmounted frozen, its waiting writers (and the loop device) would stay for good."""
    root = root.resolve()
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    mine = [p for p in points if p.startswith(str(root) + "/")]
    for p in sorted(mine, key=len, reverse=True):
        subprocess.run(["fsfreeze", "--unfreeze", p], check=False, capture_output=True)
        subprocess.run(["umount", "-l", p], check=False, capture_output=True)
