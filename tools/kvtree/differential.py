"""Differential check of axlstateless.kvtree against KVTree's own C reader and writer.

    git clone https://github.com/ECP-VeloC/KVTree && git -C KVTree checkout 8a691271   # v1.5.0
    python tools/kvtree/differential.py --kvtree-src KVTree [--examples 5000] [--seed 1]

Builds `roundtrip.c` (KVTree's `kvtree_read_file` then `kvtree_write_file`) from the KVTree sources with
gcc, AddressSanitizer and zlib, then feeds it, in batches:

- `dumps` of random trees (any bytes but NUL in keys, up to 6 levels, random order): KVTree must read
  each and write back the very same bytes, which shows that `dumps` writes what KVTree writes and that
  both keep the same order;
- random cuts, byte flips, insertions and deletions of those and of the AXL fixtures' state files,
  half of them given a header and CRC that agree with them ("resealed"): where `loads` accepts, KVTree
  must accept and write back `dumps(loads(x))`; where KVTree's own checks (header, filesize, CRC)
  refuse, `loads` must refuse too.

Inputs that pass KVTree's checks but that `loads` refuses for their body (a count or key past the end,
bytes left over, a key twice, too deep) are not given to KVTree: its unpacking has no bounds checks
(github.com/ECP-VeloC/KVTree/issues/40) and reads out of bounds on them. `--show-oob N` feeds N of them
one by one and counts AddressSanitizer's reports. Exit status 1 on any disagreement.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from axlstateless import kvtree
from axlstateless.errors import KVTreeError

# The fixtures' state files, as AXL wrote them, are seeds for the mutations.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from axlfixtures import WITH_STATE, original_state

HERE = Path(__file__).resolve().parent
SOURCES = ["kvtree.c", "kvtree_util.c", "kvtree_io.c", "kvtree_helpers.c", "kvtree_err.c"]
# KVTree's CMake build writes config.h; these are the two settings its sources read.
CONFIG_H = "#define HAVE_BYTESWAP_H 1\n#define KVTREE_FILE_LOCK_USE_FLOCK 1\n"


def build(src: Path, out: Path) -> Path:
    (out / "config.h").write_text(CONFIG_H)
    exe = out / "roundtrip"
    cmd = ["gcc", "-O1", "-g", "-fsanitize=address", "-w", f"-I{src / 'src'}", f"-I{out}", "-o", str(exe)]
    cmd += [str(HERE / "roundtrip.c"), *(str(src / "src" / f) for f in SOURCES), "-lz"]
    subprocess.run(cmd, check=True)
    return exe


def c_checks_pass(data: bytes) -> bool:
    """KVTree's own checks before it unpacks (kvtree_read_fd): header, type, version, filesize, CRC."""
    if len(data) < 20:
        return False
    magic, ftype, version, filesize, flags = struct.unpack_from(">IHHQI", data)
    if (magic, ftype, version) != (kvtree.MAGIC, 1, 1) or filesize < 20 or len(data) < filesize:
        return False
    if flags & kvtree.FLAG_CRC32:
        if filesize < 24:
            return False  # KVTree would read the CRC before the buffer: not ours to try
        (crc,) = struct.unpack_from(">I", data, filesize - 4)
        return crc == zlib.crc32(data[: filesize - 4])
    return True


def as_kvtree_reads(data: bytes) -> bytes | None:
    """`dumps` of what `loads` decodes once the input is cut to the header's filesize and the flag
    bits KVTree ignores are cleared (KVTree reads no further and checks no other flag), or None."""
    if len(data) < 20:
        return None
    filesize, flags = struct.unpack_from(">QI", data, 8)
    lenient = data[:8] + struct.pack(">QI", filesize, flags & kvtree.FLAG_CRC32) + data[20:filesize]
    try:
        return kvtree.dumps(kvtree.loads(lenient))
    except KVTreeError:
        return None


def c_allocates_huge(data: bytes) -> bool:
    """KVTree mallocs the header's filesize before it reads the file (kvtree_read_fd), and aborts
    the process when that fails (kvtree_malloc): a corrupted filesize makes AXL abort."""
    if len(data) < 20:
        return False
    magic, ftype, version, filesize, _ = struct.unpack_from(">IHHQI", data)
    return (magic, ftype, version) == (kvtree.MAGIC, 1, 1) and filesize > len(data) + (1 << 30)


def random_tree(rng: random.Random, depth: int = 0) -> kvtree.KVTree:
    tree: kvtree.KVTree = {}
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 5]) if depth < 6 else 0):
        key = bytes(rng.choice([rng.randrange(1, 256), 0x41, 0x2F]) for _ in range(rng.randrange(0, 9)))
        tree[key] = random_tree(rng, depth + 1)
    return tree


def reseal(body: bytes) -> bytes:
    head = struct.pack(">IHHQI", kvtree.MAGIC, 1, 1, 20 + len(body) + 4, kvtree.FLAG_CRC32) + body
    return head + struct.pack(">I", zlib.crc32(head))


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        how = rng.choice(["cut", "flip", "insert", "delete", "append"])
        i = rng.randrange(len(buf) + 1)
        if how == "cut":
            del buf[i:]
        elif how == "flip" and i < len(buf):
            buf[i] ^= rng.randrange(1, 256)
        elif how == "insert":
            buf[i:i] = rng.randbytes(rng.randrange(1, 5))
        elif how == "append":
            buf += rng.randbytes(rng.randrange(1, 5))
        else:
            del buf[i : i + rng.randrange(1, 5)]
    if rng.random() < 0.4 and len(buf) >= 24:
        return reseal(bytes(buf[20:-4]))
    return bytes(buf)


def run_batch(exe: Path, work: Path, inputs: list[bytes]) -> list[tuple[int, bytes | None]]:
    paths = []
    for n, data in enumerate(inputs):
        p = work / f"in.{n}"
        p.write_bytes(data)
        paths.append(p)
    proc = subprocess.run(
        [str(exe)], input="".join(f"{p}\n" for p in paths), capture_output=True, text=True, check=False
    )
    codes = [int(line[3:]) for line in proc.stdout.splitlines() if line.startswith("RC ")]
    if proc.returncode != 0 or len(codes) != len(paths):
        sys.exit(f"roundtrip died (exit {proc.returncode}) after {len(codes)} of {len(paths)}:\n{proc.stderr[-3000:]}")
    results = []
    for p, code in zip(paths, codes, strict=True):
        out = Path(f"{p}.c")
        results.append((code, out.read_bytes() if code == 0 else None))
        p.unlink()
        out.unlink(missing_ok=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kvtree-src", type=Path, required=True, help="a checkout of ECP-VeloC/KVTree (v1.5.0)")
    parser.add_argument("--examples", type=int, default=3000, help="random trees, and as many mutations")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show-oob", type=int, default=0, help="feed N body-defective inputs to KVTree alone")
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 - seeded test inputs, not secrets

    failures = 0
    with tempfile.TemporaryDirectory(prefix="kvtree-diff-") as tmp:
        work = Path(tmp)
        exe = build(args.kvtree_src, work)

        trees = [kvtree.dumps(random_tree(rng)) for _ in range(args.examples)]
        for data, (code, back) in zip(trees, run_batch(exe, work, trees), strict=True):
            if code != 0 or back != data:
                failures += 1
                print(f"writer: KVTree gave {code} and {'other bytes' if back else 'nothing'} for {data.hex()}")
        print(f"{len(trees)} random trees: KVTree read each and wrote back the same bytes ({failures} did not)")

        seeds = trees[:200] + [original_state(sid) for sid in WITH_STATE]
        agree = fed = stricter = body = huge = 0
        oob: list[bytes] = []
        inputs: list[tuple[bytes, bytes | None, bool]] = []
        for _ in range(args.examples):
            data = mutate(rng, rng.choice(seeds))
            try:
                ours: bytes | None = kvtree.dumps(kvtree.loads(data)) if data else None
            except KVTreeError:
                ours = None
            if not data:
                continue
            if c_allocates_huge(data):
                huge += 1  # refused here; KVTree would try to allocate it and abort
                assert ours is None
                continue
            lenient = None
            if c_checks_pass(data) and ours is None:
                lenient = as_kvtree_reads(data)
                if lenient is None:
                    body += 1  # refused here for its body: KVTree would read out of bounds or merge
                    oob.append(data)
                    continue
            inputs.append((data, ours or lenient, ours is None and lenient is not None))
        batch = run_batch(exe, work, [d for d, _, _ in inputs])
        for (data, expected, by_design), (code, back) in zip(inputs, batch, strict=True):
            fed += 1
            ok = (code == 0 and back == expected) if expected is not None else code == 2
            if ok and by_design:
                stricter += 1  # bytes after filesize, unknown flags: KVTree ignores them, loads refuses
            elif ok:
                agree += 1
            else:
                failures += 1
                print(f"reader: expected {'bytes' if expected else 'a refusal'}, KVTree gave {code}: {data.hex()}")
        print(f"{args.examples} mutations: {fed} given to both loads and KVTree:")
        print(f"  {agree} agreed (both accepted with the same bytes written back, or both refused)")
        print(f"  {stricter} refused only by loads, by design: bytes after filesize or unknown flag bits, which")
        print("  KVTree ignores (what it read of them, it read as loads does)")
        print(f"refused by loads and not given to KVTree: {body} for their body (a count or key past the end,")
        print("  leftover bytes, a key twice: KVTree's unpacking has no bounds checks), and")
        print(f"  {huge} for a filesize over 1 GiB beyond the data (KVTree would abort allocating it)")

        if args.show_oob:
            reports = 0
            for data in oob[: args.show_oob]:
                p = work / "oob"
                p.write_bytes(data)
                proc = subprocess.run([str(exe)], input=f"{p}\n", capture_output=True, text=True, check=False)
                reports += "AddressSanitizer" in proc.stderr
            shown = min(args.show_oob, len(oob))
            print(f"of {shown} body-defective inputs given to KVTree alone, AddressSanitizer reported {reports}")
    print("PASS" if not failures else f"FAIL: {failures} disagreements")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    sys.exit(main())
