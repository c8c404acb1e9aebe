"""Which namespace engine a door or dcap-admin uses, from its --namespace setting.

None (the default) is the embedded SQLite file in the state directory; a
``postgresql://`` URL is the shared database.  psycopg is imported only
when a URL asks for it, so the embedded default needs nothing more.
"""

from distcache.dcap.sqlite_namespace import SQLiteNamespace

SQLITE = "sqlite"


def is_postgres(spec):
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


def check_spec(spec):
    """ValueError unless spec is None, "sqlite" or a PostgreSQL URL."""
    if spec in (None, SQLITE) or is_postgres(spec):
        return spec
    raise ValueError("--namespace must be sqlite or a postgresql:// URL, not %r" % (spec,))


def open_engine(spec, root):
    """The namespace engine spec names, with root as the local state directory."""
    check_spec(spec)
    if is_postgres(spec):
        try:
            from distcache.dcap.postgres_namespace import PostgresNamespace
        except ImportError:
            raise ValueError("a postgresql:// namespace needs psycopg: "
                             "pip install 'distcache-twisted[postgresql]'") from None
        return PostgresNamespace(spec, root)
    return SQLiteNamespace(root)


def copy_namespace(source, target, replace=False):
    """Copy every entry of source into target, pnfs ids kept; the number copied.

    The pool's data files are named by pnfs id, so a door moved onto the
    copy serves the same files.  A target holding anything but its root is
    refused unless replace says to drop what it has.
    """
    if not replace and not target.is_empty():
        raise ValueError("the target namespace is not empty (--replace drops its entries)")
    rows = source.rows()
    target.load_rows(rows)
    return len(rows)
