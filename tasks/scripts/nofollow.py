"""Owner, group and mode, or a whole file, put in place by root without following a link.

Run as root by /usr/bin/python3 -I -S (a system binary; nothing from the project's
virtualenv). Paths may lie where the project user can write (the project's directory):
every file is opened with O_NOFOLLOW, so a link planted there is refused, never
followed, and owner and mode are changed through that descriptor (fchown, fchmod), so
the file checked is the file changed.

    nofollow.py fix OWNER GROUP MODE file|directory PATH
    nofollow.py install SOURCE OWNER GROUP MODE TARGET

`install` writes SOURCE's content to a new file beside TARGET (in the directory opened
once, without following a link), sets its owner and mode, and renames it onto TARGET:
atomic, and a link at TARGET is replaced, never written through.
"""
import errno
import grp
import os
import pwd
import stat
import sys


def refuse(path, why):
    print(f"{path}: {why}; fabcelery never follows a link there: nothing was changed", file=sys.stderr)
    sys.exit(3)


def open_nofollow(path, flags, dir_fd=None, mode=0o600):
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as exc:
        # ELOOP, or ENOTDIR when a directory was asked for: is it a symbolic link?
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode):
            refuse(path, "is a symbolic link")
        raise


def ids(owner, group):
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


def fix(owner, group, mode, kind, path):
    fd = open_nofollow(path, os.O_RDONLY)
    info = os.fstat(fd)
    if kind == "directory" and not stat.S_ISDIR(info.st_mode):
        refuse(path, "is not a directory")
    if kind == "file" and not stat.S_ISREG(info.st_mode):
        refuse(path, "is not a regular file")
    if kind == "file" and info.st_nlink != 1:
        refuse(path, f"has {info.st_nlink} hard links")
    os.fchown(fd, *ids(owner, group))
    os.fchmod(fd, int(mode, 8))


def install(source, owner, group, mode, target):
    directory, _, name = target.rpartition("/")
    dir_fd = open_nofollow(directory or "/", os.O_RDONLY | os.O_DIRECTORY)
    # staged under a name of this run's own; what a run cut off left goes first (unlink never
    # follows a link)
    prefix = f".{name}.fabcelery-new"
    for entry in os.listdir(dir_fd):
        if entry == prefix or entry.startswith(prefix + "."):
            try:
                os.unlink(entry, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
    staged = f"{prefix}.{os.getpid()}"
    with open(source, "rb") as f:
        content = f.read()
    fd = open_nofollow(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=dir_fd)
    try:
        os.fchown(fd, *ids(owner, group))
        os.fchmod(fd, int(mode, 8))
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        os.rename(staged, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.unlink(staged, dir_fd=dir_fd)
        raise


if __name__ == "__main__":
    {"fix": fix, "install": install}[sys.argv[1]](*sys.argv[2:])
