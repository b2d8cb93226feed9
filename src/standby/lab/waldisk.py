"""A node's WAL (or its whole data directory) on a small file system of its own, which a campaign can fill up
or hang.

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


def data_mount_point(node: NodeLayout) -> Path:
    return node.dir / "datadisk"


def move_to_loop_ext4(node: NodeLayout, size_mb: int) -> None:
    """Put ``pg_wal`` on an ext4 of ``size_mb`` in a file beside the node (a loop device), which ``freeze``
    can hang. PostgreSQL must be stopped. The loop device goes with the unmount (the mount's autoclear)."""
    if not _onto(node.pgdata / "pg_wal", mount_point(node), node.dir / "waldisk.img", size_mb):
        return  # already done
    # Recycled segments are renamed, not written anew: on a full disk the server
    # would go on for minutes on them. Without recycling (as on copy-on-write
    # file systems) the next segment needs new space at once.
    with (node.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\n# standby lab: WAL on a small file system that a campaign may fill\nwal_recycle = off\n"
                   "max_wal_size = 256MB\n")  # checkpoints often enough that WAL stays well under the disk


def move_data_to_loop_ext4(node: NodeLayout, size_mb: int) -> None:
    """Put the whole data directory, its WAL with it, on an ext4 of ``size_mb`` (the usual one-disk layout), which
    ``freeze`` hangs: the postmaster's own writes (its lock file at a shutdown) wait too. PostgreSQL stopped."""
    _onto(node.pgdata, data_mount_point(node), node.dir / "datadisk.img", size_mb)


def _loop_ext4(image: Path, size_mb: int) -> list[str]:
    """Make an ext4 of ``size_mb`` in ``image``; the mount command that puts it behind a loop device (the mount
    point to add)."""
    with image.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)  # sparse: costs the machine what is written only
    # -m 0: no blocks reserved for root, so the disk is as full for PostgreSQL as `fill` makes it.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True, text=True)
    # barrier=0: an fsync goes no further than the machine's page cache, as on the tmpfs the lab used before (its
    # host crash keeps the kernel, so nothing durable is lost either way); the lab's commits stay as cheap.
    return ["mount", "-o", "loop,barrier=0", str(image)]


def _onto(directory: Path, mnt: Path, image: Path, size_mb: int) -> bool:
    """Mount an ext4 of ``size_mb`` in ``image`` at ``mnt``, move ``directory``'s entries onto it (a copy across
    file systems: owners are set again) and put a link to it in the directory's place. False if already done."""
    if directory.is_symlink():
        return False
    mnt.mkdir(exist_ok=True)
    subprocess.run([*_loop_ext4(image, size_mb), str(mnt)], check=True, capture_output=True, text=True)
    os.chmod(mnt, 0o700)
    if (mnt / "lost+found").is_dir():
        (mnt / "lost+found").rmdir()  # an ext4's: PostgreSQL's directories hold its files only (a rewind copies them)
    for entry in directory.iterdir():
        shutil.move(str(entry), str(mnt / entry.name))
    pg = pwd.getpwnam("postgres")
    for path in [mnt, *mnt.rglob("*")]:
        os.lchown(path, pg.pw_uid, pg.pw_gid)
    directory.rmdir()
    directory.symlink_to(mnt)
    os.lchown(directory, pg.pw_uid, pg.pw_gid)
    return True


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
    """Hang every write to the file system the node's WAL is on (``fsfreeze``): its own, or the data directory's;
    False if WAL is on neither (e.g. after a clone, whose ``pg_wal`` is a plain directory again)."""
    for link, mnt in ((node.pgdata, data_mount_point(node)), (node.pgdata / "pg_wal", mount_point(node))):
        if link.is_symlink() and os.path.ismount(mnt):
            return subprocess.run(["fsfreeze", "--freeze", str(mnt)], check=False, capture_output=True).returncode == 0
    return False


def thaw(node: NodeLayout) -> None:
    """Let the writes that waited go on (a file system not frozen is left as it is)."""
    for mnt in (data_mount_point(node), mount_point(node)):
        subprocess.run(["fsfreeze", "--unfreeze", str(mnt)], check=False, capture_output=True)


def _mounted_under(root: Path) -> list[str]:
    """The mount points below ``root``, deepest first."""
    root = root.resolve()
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(str(root) + "/")), key=len, reverse=True)


def thaw_under(root: Path) -> None:
    """Thaw every file system mounted below ``root`` (a lab's disks; one not frozen is left as it is)."""
    for p in _mounted_under(root):
        subprocess.run(["fsfreeze", "--unfreeze", p], check=False, capture_output=True)


def unmount_under(root: Path) -> None:
    """Unmount every file system mounted below ``root`` (a lab's disks), deepest first. A frozen one is thawed
    first: unmounted frozen, its waiting writers (and the loop device) would stay for good."""
    thaw_under(root)
    for p in _mounted_under(root):
        subprocess.run(["umount", "-l", p], check=False, capture_output=True)
