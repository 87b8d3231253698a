#!/usr/bin/env python3
"""Bench helper (not part of overlayer): export an overlayfs upper directory as an OCI layer tar.

    export-upper.py UPPERDIR OUT.tar

This is what image builders do after each build step, and what `make bench` uses to turn the upper
dir of each step of its 5-step image into a layer. It is a small test-data tool, deliberately
independent of overlayer's own code:

  * a whiteout (char device 0/0)                  -> an empty regular file `.wh.NAME`
  * a directory with trusted.overlay.opaque=y     -> the directory, then a `.wh..wh..opq` entry in it
  * other trusted.overlay.* xattrs (origin, impure, ...: overlay bookkeeping) are dropped
  * everything else as is: numeric owners (no user/group names), modes, integer mtimes, symlinks,
    hardlinks (within the layer), device nodes, and xattrs as PAX `SCHILY.xattr.NAME` records.

Entries are written in sorted order, parents before children, names relative without `./`.
"""
import os
import stat
import sys
import tarfile

OVL = "trusted.overlay."


def xattrs(path):
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for n in names:
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            pass
    return out


def main():
    upper, out = sys.argv[1], sys.argv[2]
    counts = {"entries": 0, "whiteouts": 0, "opaque": 0, "hardlinks": 0, "xattrs": 0}
    inodes = {}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:

        def base_info(path, name, st):
            ti = tarfile.TarInfo(name)
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.uid, ti.gid = st.st_uid, st.st_gid
            ti.uname = ti.gname = ""
            ti.mtime = int(st.st_mtime)
            return ti

        def add(path, name):
            st = os.lstat(path)
            xa = xattrs(path)
            opaque = xa.get(OVL + "opaque") == b"y"
            xa = {k: v for k, v in xa.items() if not k.startswith(OVL)}
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                d, b = os.path.split(name)
                ti = base_info(path, os.path.join(d, ".wh." + b), st)
                ti.type = tarfile.REGTYPE
                ti.mode = 0o644
                ti.size = 0
                tar.addfile(ti)
                counts["whiteouts"] += 1
                counts["entries"] += 1
                return False
            ti = base_info(path, name, st)
            f = None
            if stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in inodes:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = inodes[key]
                    counts["hardlinks"] += 1
                else:
                    if st.st_nlink > 1:
                        inodes[key] = name
                    ti.type = tarfile.REGTYPE
                    ti.size = st.st_size
                    f = open(path, "rb")
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(st.st_mode):
                ti.type = tarfile.FIFOTYPE
            else:
                print(f"skipping socket {name}", file=sys.stderr)
                return False
            for k, v in (xa.items() if ti.type != tarfile.LNKTYPE else ()):
                # Binary values survive via surrogateescape (tarfile then writes hdrcharset=BINARY).
                ti.pax_headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
                counts["xattrs"] += 1
            tar.addfile(ti, f)
            if f:
                f.close()
            counts["entries"] += 1
            if opaque:
                m = tarfile.TarInfo(os.path.join(name, ".wh..wh..opq"))
                m.mode, m.uid, m.gid, m.uname, m.gname = 0o644, 0, 0, "", ""
                m.mtime = int(st.st_mtime)
                tar.addfile(m)
                counts["opaque"] += 1
                counts["entries"] += 1
            return stat.S_ISDIR(st.st_mode)

        def walk(dirpath, prefix):
            for n in sorted(os.listdir(dirpath)):
                p = os.path.join(dirpath, n)
                name = prefix + n
                if add(p, name):
                    walk(p, name + "/")

        # The root of the upper dir itself is not an entry (its attributes are the lower root's);
        # an opaque marker on the layer root is meaningless to overlayfs and is not exported.
        walk(upper, "")
    print(" ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
