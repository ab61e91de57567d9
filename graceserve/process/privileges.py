"""``--user``/``--group``: bind as root, then run as someone else, for good.

Why this module exists: ports below 1024 need root (or ``CAP_NET_BIND_SERVICE``),
and an app must never run as root.  gunicorn's answer, kept here: bind first,
then drop, then import the app.  Dropping has one right order and one way to
be wrong silently, so it lives in one place:

1. the supplementary groups first (``initgroups``: the user's groups from the
   group database, as login and systemd's ``User=`` give them; ``[gid]`` alone
   for a numeric uid with no entry), while we may still change them;
2. then the gid (a process that gave up its uid could no longer);
3. then the uid (real, effective and saved: ``setuid`` as root sets all three);
4. then the proof: ``setuid(0)`` must fail.  If it does not, the process stops.

Who drops, and when (``graceserve.process.runner``, ``graceserve.process.worker``):
one process binds, takes the pidfile, chowns what it will remove at exit, drops,
and only then imports the target; with ``--workers N`` the supervisor stays root
(it never runs app code: ``--preload`` is refused with ``--user``) and each
worker drops before it imports the target.  A process that already is the user
(``--user`` is whoever runs graceserve, or a one-process server's reload worker)
changes nothing.

Threading: ``resolve`` anywhere; ``drop`` from the main thread (``setuid``
applies to every thread of the process).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from graceserve.errors import StartupError, UsageError

__all__ = [
    "Identity",
    "check_possible",
    "chown_for",
    "drop",
    "known_group",
    "known_user",
    "may_write",
    "resolve",
]

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


@dataclass(frozen=True)
class Identity:
    """Whom to run as: uid, gid, the supplementary groups' source, names for the logs."""

    uid: int
    gid: int
    name: str | None
    """The user database's name for ``uid`` (its groups are looked up), or None."""
    group_name: str

    def describe(self) -> str:
        """``nobody:nogroup (65534:65534)``."""
        return f"{self.name or self.uid}:{self.group_name} ({self.uid}:{self.gid})"


def known_user(name: str) -> bool:
    """Whether the user database has ``name``."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def known_group(name: str) -> bool:
    """Whether the group database has ``name``."""
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _numeric(text: str, what: str, flag: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    if value > _MAX_ID:
        raise UsageError(f"{flag} {text}: {what} ids go up to {_MAX_ID}")
    return value


def resolve(user: str | None, group: str | None) -> Identity | None:
    """``--user``/``--group`` (names or numeric ids) as an Identity; None without --user.

    UsageError (exit 2, one line) for an unknown name, ``--group`` without
    ``--user``, ``--user root`` and a numeric uid without an entry and no ``--group``.
    """
    if user is None:
        if group is not None:
            raise UsageError(
                f"--group {group} needs --user: without it the process would stay root"
            )
        return None
    uid = _numeric(user, "user", "--user")
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user)
    except KeyError:
        if uid is None:
            raise UsageError(f"--user {user}: no such user") from None
        entry = None
    if entry is not None:
        uid = entry.pw_uid
    assert uid is not None
    if uid == 0:
        raise UsageError(f"--user {user} is root: --user is the user to run as instead of root")
    if group is None:
        if entry is None:
            raise UsageError(f"--user {user} has no entry in the user database: give --group too")
        gid = entry.pw_gid
    else:
        gid = _group_id(group)
    try:
        group_name = grp.getgrgid(gid).gr_name
    except KeyError:
        group_name = str(gid)
    return Identity(uid, gid, entry.pw_name if entry is not None else None, group_name)


def _group_id(group: str) -> int:
    gid = _numeric(group, "group", "--group")
    if gid is not None:
        return gid
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--group {group}: no such group") from None


def check_possible(identity: Identity) -> None:
    """StartupError (exit 3) unless this process can become ``identity``: it is root,
    or already is that user and group (then ``drop`` changes nothing)."""
    if os.geteuid() == 0 or _already(identity):
        return
    raise StartupError(
        f"--user/--group {identity.describe()}: only root can switch users, and this is "
        f"uid {os.geteuid()}, gid {os.getegid()} (run as root, or leave --user out)"
    )


def _already(identity: Identity) -> bool:
    ids = (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    return ids == (identity.uid, identity.uid, identity.gid, identity.gid)


def may_write(identity: Identity, directory: str) -> bool:
    """Whether ``identity`` may create and remove files in ``directory``.

    As root the question is asked as the user: the effective ids and groups are
    switched for the one ``access`` call and back (``seteuid`` can be undone; the
    real uid stays 0).  Main thread, before other threads that care about ids run.
    """
    want = os.W_OK | os.X_OK
    if os.geteuid() != 0:
        return os.access(directory, want)
    groups = os.getgroups()
    egid = os.getegid()
    try:
        listed = os.getgrouplist(identity.name, identity.gid) if identity.name else []
        os.setgroups(sorted({identity.gid, *listed}))
        os.setegid(identity.gid)
        os.seteuid(identity.uid)
        return os.access(directory, want, effective_ids=True)
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def chown_for(identity: Identity, path: str | None = None, fd: int | None = None) -> None:
    """Give ``path`` (not following a symlink) or ``fd`` to ``identity`` (root only; a
    process that already is the user owns what it made).  StartupError if refused."""
    if os.geteuid() != 0:
        return
    try:
        if fd is not None:
            os.fchown(fd, identity.uid, identity.gid)
        elif path is not None:
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
    except OSError as exc:
        raise StartupError(
            f"cannot give {path or 'the pidfile'} to {identity.describe()}: {exc.strerror or exc}"
        ) from None


def drop(identity: Identity) -> None:
    """Become ``identity`` for good: groups, gid, uid, then prove it (module docstring).

    Nothing to do for a process that already is it; StartupError (exit 3) if it
    cannot (``check_possible``) or if root could be regained afterwards.
    """
    check_possible(identity)
    if _already(identity) and os.geteuid() != 0:
        return
    try:
        if identity.name is not None:
            os.initgroups(identity.name, identity.gid)
        else:
            os.setgroups([identity.gid])
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as exc:
        raise StartupError(
            f"cannot switch to {identity.describe()}: {exc.strerror or exc}"
        ) from None
    try:
        os.setuid(0)
    except PermissionError:
        pass  # irreversible, as it must be
    else:
        raise StartupError(f"switched to {identity.describe()}, but root could be regained")
    if os.getresuid() != (identity.uid,) * 3 or os.getresgid() != (identity.gid,) * 3:
        raise StartupError(f"switching to {identity.describe()} left another id behind")
