"""tp_python: a CPython interpreter survives checkpoint/restore.

Usage: python3 tp_python.py WORKDIR [--corrupt]

State: a dict of 100k entries (digest taken before), a generator suspended
after 500 of its 1000 values, a closure with a counter, a file open for
reading at offset 3000. Follows the ready/go/result protocol of the stasis
test programs (see crates/tests/src/lib.rs); never forks, no threads.
"""
import hashlib
import os
import sys
import time

W = sys.argv[1]
CORRUPT = "--corrupt" in sys.argv[2:]


def digest(d):
    h = hashlib.sha256()
    for k in sorted(d):
        h.update(f"{k}={d[k]};".encode())
    return h.hexdigest()


def squares():
    for i in range(1000):
        yield i * i


def make_counter():
    n = 0

    def bump():
        nonlocal n
        n += 1
        return n

    return bump


table = {i: f"value-{i * 7919 % 100003}" for i in range(100_000)}
table_digest = digest(table)
gen = squares()
consumed = [next(gen) for _ in range(500)]
counter = make_counter()
for _ in range(10):
    counter()
data = bytes((i * 31 + 7) % 256 for i in range(8192))
with open(os.path.join(W, "py-data.bin"), "wb") as f:
    f.write(data)
fh = open(os.path.join(W, "py-data.bin"), "rb")
head = fh.read(3000)
pid = os.getpid()

with open(os.path.join(W, "ready.tmp"), "w") as f:
    f.write(f"READY {pid}\n")
os.rename(os.path.join(W, "ready.tmp"), os.path.join(W, "ready"))

go = os.path.join(W, "go")
while True:
    try:
        with open(go, "rb") as g:
            if g.read(1) == b"1":
                break
    except FileNotFoundError:
        if not os.path.isdir(W):
            sys.exit(3)  # the harness is gone
    time.sleep(0.01)

if CORRUPT:
    table[99_999] = "corrupted"

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


check(os.getpid() == pid, f"pid {os.getpid()} != {pid}")
check(len(table) == 100_000, f"dict has {len(table)} entries")
check(digest(table) == table_digest, "dict contents changed")
check(head == data[:3000], "bytes read before the checkpoint changed")
check(consumed == [i * i for i in range(500)], "consumed generator values changed")
rest = list(gen)
check(rest == [i * i for i in range(500, 1000)], f"generator resumed wrong: first {rest[:3]}")
check(counter() == 11, "closure counter changed")
check(fh.tell() == 3000, f"file offset {fh.tell()} != 3000")
check(fh.read(100) == data[3000:3100], "file read after restore returned wrong bytes")

line = "PASS\n" if not failures else "FAIL: " + "; ".join(failures) + "\n"
with open(os.path.join(W, "result.tmp"), "w") as f:
    f.write(line)
os.rename(os.path.join(W, "result.tmp"), os.path.join(W, "result"))
sys.exit(0 if not failures else 1)
