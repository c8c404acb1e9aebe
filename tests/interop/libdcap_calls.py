"""Drive libdcap's POSIX-like calls (dc_mkdir, dc_opendir, ...) and print what they return.

Run as a separate process by test_libdcap.py: a crash inside the client
library must not take the test runner with it.  Prints one JSON object.
"""

import ctypes
import errno
import json
import sys

lib = ctypes.CDLL("libdcap.so.1", use_errno=True)
lib.dc_opendir.restype = ctypes.c_void_p
lib.dc_readdir64.restype = ctypes.c_void_p
lib.dc_readdir64.argtypes = [ctypes.c_void_p]
lib.dc_closedir.argtypes = [ctypes.c_void_p]
lib.dc_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]

# struct dirent64 on Linux: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name
NAME_OFFSET = 19


def call(fn, *args):
    ctypes.set_errno(0)
    rc = fn(*args)
    return [rc, errno.errorcode.get(ctypes.get_errno(), "0")]


def listing(url):
    d = lib.dc_opendir(url.encode())
    if not d:
        return None
    names = []
    while True:
        entry = lib.dc_readdir64(d)
        if not entry:
            break
        names.append(ctypes.string_at(entry + NAME_OFFSET).decode("ascii"))
    lib.dc_closedir(d)
    return names


def main(base):
    out = {}
    out["mkdir"] = call(lib.dc_mkdir, (base + "/d").encode(), 0o755)
    out["mkdir_sub"] = call(lib.dc_mkdir, (base + "/d/sub").encode(), 0o750)
    out["mkdir_again"] = call(lib.dc_mkdir, (base + "/d").encode(), 0o755)
    fd = lib.dc_open((base + "/d/f").encode(), 0o1 | 0o100, 0o644)
    out["write"] = lib.dc_write(fd, b"12345", 5)
    out["close"] = lib.dc_close(fd)
    out["list1"] = listing(base + "/d")
    out["list2"] = listing(base + "/d")  # a second listing in the same process
    out["list_file"] = listing(base + "/d/f")
    out["chmod"] = call(lib.dc_chmod, (base + "/d/f").encode(), 0o600)
    out["unlink_dir"] = call(lib.dc_unlink, (base + "/d/sub").encode())
    out["rmdir_nonempty"] = call(lib.dc_rmdir, (base + "/d").encode())
    fd = lib.dc_open((base + "/d/g").encode(), 0o1 | 0o100, 0o644)
    out["close_empty"] = lib.dc_close(fd)
    out["list_with_g"] = listing(base + "/d")
    out["unlink"] = call(lib.dc_unlink, (base + "/d/g").encode())
    out["rmdir_sub"] = call(lib.dc_rmdir, (base + "/d/sub").encode())
    out["list3"] = listing(base + "/d")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
