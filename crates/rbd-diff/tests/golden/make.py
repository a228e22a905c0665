#!/usr/bin/env python3
"""Writes the golden streams of tests/golden.rs, byte by byte from Ceph's
doc/dev/rbd-diff.rst and what src/tools/rbd/action/Export.cc writes
(independently of the Rust encoder, which the tests compare against them).
Run from this directory: python3 make.py"""
import struct

le32 = lambda v: struct.pack('<I', v)
le64 = lambda v: struct.pack('<Q', v)

def name_v1(tag, s):
    return tag + le32(len(s)) + s

def name_v2(tag, s):
    return tag + le64(4 + len(s)) + le32(len(s)) + s

# rbd export-diff IMG@snap1 (from nothing): t, s, one data and one zero extent, e.
full = (b'rbd diff v1\n' + name_v1(b't', b'snap1') + b's' + le64(8192)
        + b'w' + le64(0) + le64(5) + b'hello'
        + b'z' + le64(4096) + le64(4096)
        + b'e')

# rbd export-diff --from-snap a IMG@b: f, t, s, z then w, e.
incr = (b'rbd diff v1\n' + name_v1(b'f', b'a') + name_v1(b't', b'b')
        + b's' + le64(1 << 20)
        + b'z' + le64(0) + le64(512)
        + b'w' + le64(512) + le64(3) + b'abc'
        + b'e')

# rbd export-diff --from-snap b IMG (to the head): f, s, no extents, e.
head = b'rbd diff v1\n' + name_v1(b'f', b'b') + b's' + le64(4096) + b'e'

# rbd export --export-format 2 of an image with one protected snapshot s1.
meta_k, meta_v = b'conf_rbd_cache', b'false'
image = (b'rbd image v2\n'
         + b'O' + le64(8) + le64(22)
         + b'T' + le64(8) + le64(1)
         + b'U' + le64(8) + le64(4 << 20)
         + b'C' + le64(8) + le64(1)
         + b'M' + le64(8 + len(meta_k) + len(meta_v)) + le32(len(meta_k)) + meta_k
         + le32(len(meta_v)) + meta_v
         + b'E'
         + b'rbd image diffs v2\n' + le64(2)
         # diff 1: nothing -> s1 (protected)
         + b'rbd diff v2\n' + name_v2(b't', b's1')
         + b'p' + le64(1) + b'\x01'
         + b's' + le64(8) + le64(8192)
         + b'w' + le64(16 + 4) + le64(0) + le64(4) + b'data'
         + b'e'
         # diff 2: s1 -> head
         + b'rbd diff v2\n' + name_v2(b'f', b's1')
         + b's' + le64(8) + le64(8192)
         + b'z' + le64(16) + le64(4096) + le64(4096)
         + b'e')

for name, data in [('diff-v1-full.bin', full), ('diff-v1-incremental.bin', incr),
                   ('diff-v1-head.bin', head), ('image-v2.bin', image)]:
    with open(name, 'wb') as f:
        f.write(data)
