"""Return codes: one name per code, defined once, and the module layering around them."""

import ast
import pathlib

from distcache.dcap import errors, mover
from distcache.dcap.errors import DcapError, TransferError
from replies import failed_args

PACKAGE = pathlib.Path(errors.__file__).parent


def _codes():
    return {name: value for name, value in vars(errors).items() if name.startswith("RC_")}


def _modules():
    return sorted(PACKAGE.glob("*.py"))


def test_each_code_has_exactly_one_name():
    by_value = {}
    for name, value in _codes().items():
        by_value.setdefault(value, []).append(name)
    assert {v: n for v, n in by_value.items() if len(n) > 1} == {}


def test_the_codes_dccp_acts_on_keep_their_numbers():
    assert (errors.RC_NOT_CACHED, errors.RC_TIMEOUT, errors.RC_DISK_IO,
            errors.RC_INVALID_ARGS, errors.RC_NOT_FILE) == (4, 112, 204, 10015, 1)


def test_no_other_module_defines_a_return_code_or_raises_a_bare_number():
    found = []
    for path in _modules():
        if path.name == "errors.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if (isinstance(target, ast.Name) and "RC" in target.id
                            and isinstance(node.value, ast.Constant)):
                        found.append("%s:%d %s" % (path.name, node.lineno, target.id))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id.endswith("Error") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, int)):
                found.append("%s:%d %s(%r, ...)" % (path.name, node.lineno, node.func.id,
                                                    node.args[0].value))
    assert found == []


def test_a_transfer_error_is_a_dcap_error_and_the_mover_still_exports_it():
    e = TransferError(errors.RC_DISK_IO, "data connection lost before CLOSE", "EIO")
    assert isinstance(e, DcapError)
    assert (e.rc, e.message, e.posix) == (204, "data connection lost before CLOSE", "EIO")
    assert mover.TransferError is TransferError


def test_the_namespace_seam_knows_no_engine():
    tree = ast.parse((PACKAGE / "namespace.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "sqlite3" not in imported
    assert not any(m and "sqlite_namespace" in m for m in imported)


def test_dcap_imports_have_no_cycles():
    graph = {}
    for path in _modules():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("distcache.dcap."):
                    deps.add(node.module.rsplit(".", 1)[1])
                elif node.module == "distcache.dcap":
                    deps.update(alias.name for alias in node.names)
        graph[path.stem] = deps & {p.stem for p in _modules()}

    def visit(node, trail):
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        for dep in graph.get(node, ()):
            visit(dep, trail + [node])

    for module in graph:
        visit(module, [])


def test_the_door_reply_of_an_error_is_escaped_by_control_alone():
    e = errors.BadName(errors.RC_INVALID_ARGS, 'bad "name" a\\b \u00e9', "EINVAL")
    assert failed_args(e) == '10015 "bad \\x22name\\x22 a\\x5cb \\xe9" EINVAL'
    assert not hasattr(DcapError, "reply_args")


def test_str_of_an_error_is_a_log_line_naming_the_code():
    assert str(errors.NotFound(10001, "No such file or directory", "ENOENT")) == \
        "No such file or directory (rc 10001, ENOENT)"
    assert str(errors.ReadOnly(1, "File is readOnly")) == "File is readOnly (rc 1)"
