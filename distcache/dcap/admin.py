"""dcap-admin: look after the namespace, pool and tape of a DCAP state directory, and its logins.

Runs next to (or instead of) a door on the same ``--root``; the SQLite
namespace lets both work at once.  Tape commands use the back end recorded
in the root by ``dcap-admin tape``, the same one the door loads.
"""

import argparse
import getpass
import os
import shutil
import stat
import sys

from twisted.internet import defer, task

from distcache.version import version_line
from distcache.dcap import engines, hsm, space
from distcache.dcap.auth import PLUGIN_LIMIT, PasswordFile, PasswordFileError, check_user_name
from distcache.dcap.checksum import BLOCK_SIZE
from distcache.dcap.errors import (
    RC_DIR_EXISTS, RC_FILE_NOT_FOUND, RC_INVALID_ARGS, RC_NOT_DIRECTORY, BadName, DcapError,
)
from distcache.dcap.names import check_name
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool
from distcache.dcap.stateroot import ENV as ROOT_ENV, NoStateDirectory, existing_root


def _mode(text):
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError("not an octal mode: %r" % text) from None


def _owner(text):
    try:
        uid, _, gid = text.partition(":")
        return int(uid), int(gid) if gid else None
    except ValueError:
        raise argparse.ArgumentTypeError("owner must be UID[:GID]") from None


def _option(text):
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError("script options are KEY=VALUE")
    return key.lstrip("-"), value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dcap-admin",
        description="Manage the namespace, pool and tape of a DCAP door's state directory.",
    )
    parser.add_argument("--root", default=None,
                        help="the door's state directory (default: $%s, else var/dcap "
                             "if it exists here)" % ROOT_ENV)
    parser.add_argument("--version", action="version", version=version_line("dcap-admin"))
    parser.add_argument("--namespace", default=None, metavar="sqlite|URL",
                        help="the namespace: sqlite (the file in --root, the default) or the "
                             "postgresql:// URL the doors share")
    parser.add_argument("--no-fsync", action="store_true",
                        help="do not fsync imported data (faster, less durable)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", help="copy a local directory tree in")
    p.add_argument("source")
    p.add_argument("dest", nargs="?", default="/")
    p.add_argument("--owner", type=_owner, help="UID[:GID] instead of the files' own")
    p.add_argument("--replace", action="store_true", help="replace existing files")

    p = sub.add_parser("copy-namespace",
                       help="copy a whole namespace between engines, pnfs ids kept")
    p.add_argument("source", metavar="FROM", help="sqlite (the file in --root) or a postgresql:// URL")
    p.add_argument("target", metavar="TO", help="sqlite or a postgresql:// URL")
    p.add_argument("--replace", action="store_true",
                   help="drop what the target holds (otherwise it must be empty)")

    p = sub.add_parser("ls", help="list a directory (or show a file)")
    p.add_argument("path", nargs="?", default="/")
    sub.add_parser("list", help="list everything stored")

    p = sub.add_parser("mkdir", help="create a directory")
    p.add_argument("path")
    p.add_argument("-p", "--parents", action="store_true")
    p.add_argument("--mode", type=_mode, default=0o755)
    p.add_argument("--owner", type=_owner)

    p = sub.add_parser("rm", help="remove a file or an empty directory")
    p.add_argument("path")

    for name, text in (("flush", "copy files to tape"),
                       ("drop", "remove the disk copy of flushed files"),
                       ("stage", "bring tape-only files back to disk")):
        p = sub.add_parser(name, help=text + " (a directory means every file below it)")
        p.add_argument("path")

    p = sub.add_parser("states", help="disk/tape state of every file below PATH")
    p.add_argument("path", nargs="?", default="/")

    sub.add_parser("space", help="the pool's use against its water marks, the flush queue "
                                 "and the pins")

    p = sub.add_parser("tape", help="show or set the tape back end")
    tape = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    tape.add_parser("show")
    tape.add_parser("none")
    t = tape.add_parser("dir", help="a directory, with simulated delays")
    _hsm_names(t)
    t.add_argument("directory")
    t.add_argument("--stage-delay", type=float, default=0.0)
    t.add_argument("--flush-delay", type=float, default=0.0)
    t = tape.add_parser("script", help="a dCache HSM script")
    _hsm_names(t)
    t.add_argument("script")
    t.add_argument("--timeout", type=float, default=600.0)
    t.add_argument("--retries", type=int, default=2)
    t.add_argument("--retry-delay", type=float, default=5.0)
    t.add_argument("-o", "--option", type=_option, action="append", default=[],
                   help="KEY=VALUE passed to the script as -KEY=VALUE")

    p = sub.add_parser("passwd", help="add a door login, change its password or ids, or remove it")
    p.add_argument("file", help="the password file the door's --passwd names")
    p.add_argument("user")
    p.add_argument("--uid", type=_id, help="uid the user's requests run as (needed for a new user)")
    p.add_argument("--gid", type=_id, help="gid the user's requests run as (needed for a new user)")
    p.add_argument("--delete", action="store_true", help="remove the user")
    return parser


def _id(text):
    if not text.isdigit() or int(text) > 0x7FFFFFFF:
        raise argparse.ArgumentTypeError("ids are numbers from 0 to 2147483647")
    return int(text)


def _new_password(stdin, err):
    """The new password: asked twice on a terminal, else the first line of standard input."""
    if stdin.isatty():
        first = getpass.getpass("New password: ", stream=err)
        if getpass.getpass("Again: ", stream=err) != first:
            raise PasswordFileError("the two passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\n")
    if not password:
        raise PasswordFileError("empty password")
    if len(password.encode("utf-8")) > PLUGIN_LIMIT or "\n" in password:
        raise PasswordFileError("passwords are at most %d bytes: dcap's ssl tunnel reads no more"
                                % PLUGIN_LIMIT)
    return password


def passwd(args, out, err, stdin):
    """dcap-admin passwd: needs no state directory, only the password file."""
    accounts = PasswordFile(args.file)
    try:
        if args.delete:
            if not accounts.remove(args.user):
                err.write("dcap-admin: passwd: no user %s in %s\n" % (args.user, args.file))
                return 1
            out.write("removed %s\n" % (args.user,))
            return 0
        check_user_name(args.user)
        known = accounts.find(args.user)
        if known is None and (args.uid is None or args.gid is None):
            raise PasswordFileError("a new user needs --uid and --gid")
        account = accounts.set(args.user, _new_password(stdin, err), args.uid, args.gid)
    except (PasswordFileError, OSError) as e:
        err.write("dcap-admin: passwd: %s\n" % (e,))
        return 1
    out.write("%s %s (uid %d, gid %d)\n" % ("changed" if known else "added", account.user,
                                             account.uid, account.gid))
    return 0


def _hsm_names(parser):
    parser.add_argument("--hsm-type", default="osm", help="URI scheme (default: osm)")
    parser.add_argument("--instance", default="tape", help="HSM instance (default: tape)")


def _line(entry, with_path=False):
    adler = "%08x" % entry.adler32 if entry.adler32 is not None else "-"
    name = entry.path if with_path else entry.name
    return "%s %5d %5d %12d %s %-9s %s %s" % (
        entry.mode_string, entry.uid, entry.gid, entry.size, entry.pnfsid,
        entry.state, adler, name)


def _pct(fraction):
    return "%g%%" % round(fraction * 100, 4)


class Admin:
    """The commands, over one opened pool; tape commands return Deferreds."""

    def __init__(self, root, reactor, out, err, fsync=True, namespace=None):
        self.root = root
        self.out = out
        self.err = err
        self.pool = open_pool(root, hsm=hsm.load_config(root, reactor), fsync=fsync,
                              space=space.load_settings(root), namespace=namespace)
        self.ns = self.pool.namespace
        self.failures = 0

    def say(self, text):
        self.out.write(text + "\n")

    def complain(self, what, error):
        self.failures += 1
        message = error.message if isinstance(error, DcapError) else str(error)
        self.err.write("dcap-admin: %s: %s\n" % (what, message))

    # -- namespace --------------------------------------------------------

    def ls(self, path):
        entry = self.ns.lookup(path, ROOT)
        for child in self.ns.listdir(path, ROOT) if entry.is_dir else [entry]:
            self.say(_line(child))

    def list(self):
        for entry in self.ns.walk("/"):
            if entry.path != "/":
                self.say(_line(entry, with_path=True))

    def mkdir(self, path, parents=False, mode=0o755, owner=None):
        parts = [p for p in path.split("/") if p not in ("", ".")]
        targets = (["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
                   if parents else ["/" + "/".join(parts)])
        for target in targets:
            try:
                entry = self.ns.mkdir(target, ROOT, mode)
            except DcapError as e:
                if parents and e.rc == 20 and self.ns.lookup(target, ROOT).is_dir:
                    continue
                raise
            if owner:
                self.ns.chown(target, ROOT, owner[0], owner[1])
            self.say("created %s %s" % (entry.pnfsid, target))

    def rm(self, path):
        entry = self.ns.lookup(path, ROOT)
        if entry.is_dir:
            self.ns.rmdir(path, ROOT)
        else:
            self.pool.unlink(path, ROOT)
        self.say("removed %s %s" % (entry.pnfsid, entry.path))

    # -- import -----------------------------------------------------------

    def import_tree(self, source, dest, owner=None, replace=False):
        """Copy source (a directory or a file) to dest; bad names are skipped."""
        if not os.path.exists(source):
            raise DcapError(RC_FILE_NOT_FOUND, "%s does not exist" % source)
        if os.path.isfile(source) and not os.path.islink(source):
            self._import_file(source, self._file_target(source, dest), owner, replace)
            return
        if not os.path.isdir(source) or os.path.islink(source):
            raise DcapError(RC_INVALID_ARGS, "%s is not a regular file or directory" % source)
        if not self._exists(dest):
            self.mkdir(dest, parents=True)
        base = self.ns.lookup(dest, ROOT)
        if not base.is_dir:
            raise DcapError(RC_NOT_DIRECTORY, "%s is not a directory" % dest, "ENOTDIR")
        top = base.path.rstrip("/")
        for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
            rel = os.path.relpath(dirpath, source)
            prefix = top if rel == "." else top + "/" + rel.replace(os.sep, "/")
            keep = []
            for name in sorted(dirnames):
                local = os.path.join(dirpath, name)
                if os.path.islink(local):
                    self.complain(local, "symbolic link not imported")
                    continue
                if self._import_dir(local, prefix + "/" + name, name, owner):
                    keep.append(name)
            dirnames[:] = keep
            for name in sorted(filenames):
                local = os.path.join(dirpath, name)
                try:
                    check_name(name)
                except BadName as e:
                    self.complain(local, e)
                    continue
                if os.path.islink(local) or not stat.S_ISREG(os.lstat(local).st_mode):
                    self.complain(local, "not a regular file (symlinks are not followed)")
                    continue
                self._import_file(local, prefix + "/" + name, owner, replace)

    def _file_target(self, source, dest):
        """dest itself, or dest/<name> when dest is (or, ending in /, becomes) a directory."""
        name = os.path.basename(source)
        if dest.endswith("/") and not self._exists(dest):
            self.mkdir(dest, parents=True)
        if self._exists(dest) and self.ns.lookup(dest, ROOT).is_dir:
            return dest.rstrip("/") + "/" + name
        return dest

    def _exists(self, path):
        try:
            self.ns.lookup(path, ROOT)
            return True
        except DcapError as e:
            if e.rc == 10001:
                return False
            raise

    def _import_dir(self, local, target, name, owner):
        try:
            check_name(name)
            st = os.lstat(local)
            try:
                self.ns.mkdir(target, ROOT, stat.S_IMODE(st.st_mode))
            except DcapError as e:
                if e.rc != RC_DIR_EXISTS or not self.ns.lookup(target, ROOT).is_dir:
                    raise
            uid, gid = owner or (st.st_uid, st.st_gid)
            self.ns.chown(target, ROOT, uid, st.st_gid if gid is None else gid)
            return True
        except DcapError as e:
            self.complain(local, e)
            return False

    def _import_file(self, local, target, owner, replace):
        try:
            st = os.lstat(local)
            upload = self.pool.open_write(target, ROOT, stat.S_IMODE(st.st_mode), replace,
                                          overwrite_hint="import --replace overwrites it")
        except DcapError as e:
            self.complain(local, e)
            return
        uid, gid = owner or (st.st_uid, st.st_gid)
        upload.ticket.uid = uid
        upload.ticket.gid = st.st_gid if gid is None else gid
        try:
            with open(local, "rb") as f:
                shutil.copyfileobj(f, upload.file, BLOCK_SIZE)
            entry = upload.commit()
        except (OSError, DcapError) as e:
            upload.abort()
            self.complain(local, e)
            return
        self.say("imported %s %s (%d bytes, adler32 %08x)"
                 % (entry.pnfsid, entry.path, entry.size, entry.adler32))

    # -- tape ---------------------------------------------------------------

    def _files(self, path):
        return [e for e in self.ns.walk(path) if e.is_file]

    def states(self, path):
        counts = {}
        for entry in self._files(path):
            counts[entry.state] = counts.get(entry.state, 0) + 1
            extra = " " + entry.tape_uri if entry.tape_uri else ""
            staging = (" (staging, pid %d)" % (entry.staging or os.getpid())
                       if self.pool.is_staging(entry) else "")
            self.say("%-9s %s %s%s%s" % (entry.state, entry.pnfsid, entry.path, extra, staging))
        summary = ", ".join("%s %d" % kv for kv in sorted(counts.items()))
        self.say("# %s" % (summary or "no files"))

    @defer.inlineCallbacks
    def flush(self, path):
        for entry in self._files(path):
            try:
                done = yield self.pool.flush(entry)
                self.say("flushed %s %s %s" % (done.pnfsid, done.path, done.tape_uri))
            except DcapError as e:
                self.complain(entry.path, e)

    def drop(self, path):
        for entry in self._files(path):
            try:
                done = self.pool.drop(entry)
                self.say("dropped %s %s" % (done.pnfsid, done.path))
            except DcapError as e:
                self.complain(entry.path, e)

    @defer.inlineCallbacks
    def stage(self, path):
        for entry in self._files(path):
            try:
                done = yield self.pool.stage(entry)
                self.say("staged %s %s" % (done.pnfsid, done.path))
            except DcapError as e:
                self.complain(entry.path, e)

    def space(self):
        """Use against the marks, then the flush queue and the pins, oldest first."""
        settings = self.pool.space
        survey = self.pool.survey()
        used = survey.used
        if settings.pool_size is None:
            self.say("pool %s: %d bytes in %d disk copies; no size limit (no sweeping)"
                     % (self.pool.name, used, len(survey.copies)))
        else:
            size = settings.pool_size
            self.say("pool %s: %d of %d bytes used (%.1f%%) in %d disk copies"
                     % (self.pool.name, used, size, 100.0 * used / size, len(survey.copies)))
            where = ("above the high mark" if used > settings.high_bytes else
                     "between the marks" if used > settings.low_bytes else "below the low mark")
            self.say("marks: high %s = %d bytes, low %s = %d bytes; %s"
                     % (_pct(settings.high), settings.high_bytes, _pct(settings.low),
                        settings.low_bytes, where))
            self.say("droppable (on tape, not pinned): %d bytes; free %d, free after drops %d"
                     % (survey.droppable, survey.free, survey.room_after_drops))
        self.say("policy: " + settings.describe())
        queue = survey.unflushed
        self.say("flush queue: %d files, %d bytes" % (len(queue), sum(c.size for c in queue)))
        for c in queue:
            self.say("  %s %12d  waiting %6.0fs  %s" % (c.pnfsid, c.size,
                                                       max(survey.now - c.written, 0),
                                                       self._path(c)))
        pins = survey.pins
        self.say("pins: %d" % len(pins))
        for c in pins:
            self.say("  %s %12d  %6.0fs left  %s" % (c.pnfsid, c.size,
                                                    c.pinned_until - survey.now, self._path(c)))

    def _path(self, copy):
        try:
            return self.pool.engine.get(copy.pnfsid).path
        except DcapError:
            return "(no file)"

    def tape(self, args):
        if args.kind == "show":
            path = hsm.config_path(self.root)
            if os.path.exists(path):
                with open(path) as f:
                    self.out.write(f.read())
            else:
                self.say("no tape back end")
        elif args.kind == "none":
            if os.path.exists(hsm.config_path(self.root)):
                os.unlink(hsm.config_path(self.root))
            self.say("tape back end removed")
        elif args.kind == "dir":
            hsm.save_config(self.root, "directory", args.directory,
                            stage_delay=args.stage_delay, flush_delay=args.flush_delay,
                            hsm_type=args.hsm_type, instance=args.instance)
            self.say("tape back end: directory %s" % os.path.abspath(args.directory))
        else:
            if not os.access(args.script, os.X_OK):
                raise DcapError(RC_INVALID_ARGS, "%s is not an executable script" % args.script)
            hsm.save_config(self.root, "script", args.script, timeout=args.timeout,
                            retries=args.retries, retry_delay=args.retry_delay,
                            hsm_type=args.hsm_type, instance=args.instance,
                            options=dict(args.option))
            self.say("tape back end: script %s" % os.path.abspath(args.script))


@defer.inlineCallbacks
def run(argv, reactor, out=None, err=None, stdin=None):
    """Run one dcap-admin command; fires with the exit status (0, 1 or 2)."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code
    if args.command == "passwd":
        return passwd(args, out, err, stdin or sys.stdin)
    try:
        root = existing_root(args.root)
    except NoStateDirectory as e:
        err.write("dcap-admin: %s\n" % e)
        return 2
    if args.command == "copy-namespace":
        return copy_namespaces(root, args.source, args.target, args.replace, out, err)
    try:
        admin = Admin(root, reactor, out, err, fsync=not args.no_fsync,
                      namespace=args.namespace)
    except (OSError, ValueError, DcapError) as e:
        err.write("dcap-admin: %s\n" % e)
        return 1
    try:
        cmd = args.command
        if cmd == "import":
            admin.import_tree(args.source, args.dest, args.owner, args.replace)
        elif cmd == "ls":
            admin.ls(args.path)
        elif cmd == "list":
            admin.list()
        elif cmd == "mkdir":
            admin.mkdir(args.path, args.parents, args.mode, args.owner)
        elif cmd == "rm":
            admin.rm(args.path)
        elif cmd == "states":
            admin.states(args.path)
        elif cmd == "flush":
            yield admin.flush(args.path)
        elif cmd == "drop":
            admin.drop(args.path)
        elif cmd == "stage":
            yield admin.stage(args.path)
        elif cmd == "tape":
            admin.tape(args)
        elif cmd == "space":
            admin.space()
    except DcapError as e:
        admin.complain(getattr(args, "path", None) or getattr(args, "source", cmd), e)
    finally:
        admin.ns.close()
    return 1 if admin.failures else 0


def copy_namespaces(root, source, target, replace, out, err):
    """dcap-admin copy-namespace: every entry from one engine to another; exit status."""
    if source == target:
        err.write("dcap-admin: copy-namespace needs two different namespaces\n")
        return 2
    opened = []
    try:
        for spec in (source, target):
            opened.append(engines.open_engine(spec, root))
        count = engines.copy_namespace(opened[0], opened[1], replace=replace)
    except (OSError, ValueError, DcapError) as e:
        err.write("dcap-admin: %s\n" % e)
        return 1
    finally:
        for engine in opened:
            engine.close()
    out.write("copied %d entries from %s to %s\n" % (count, _shown(source), _shown(target)))
    return 0


def _shown(spec):
    """A namespace for the report: sqlite, or the URL without user and password."""
    return spec if not engines.is_postgres(spec) else spec.split("@")[-1]


def main(argv=None):
    """Console entry point: runs the command on the reactor and exits with its status."""
    argv = sys.argv[1:] if argv is None else argv

    def go(reactor):
        return run(argv, reactor).addCallback(_exit)

    task.react(go)


def _exit(code):
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
