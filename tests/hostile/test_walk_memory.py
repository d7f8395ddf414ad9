"""Issue 12 item 7 (walks): a directory of a huge number of entries is never loaded whole.

A local user (nobody) plants 200,000 empty files in one directory. The walk
(shared by yara and files) runs in a freshly exec'd child, which reports its
resident memory before the walk and its peak (VmHWM) after it: the walk
yields every file, and its peak grows by less than a stated bound (entries
are read in batches of ``LIST_BATCH``).
"""
from __future__ import annotations

import json
import subprocess
import sys

from tests.hostile.unprivileged import as_nobody, public_dir

FILES = 200_000
# Growth of the peak resident memory allowed to the walk. Measured: 3.7 MB; the walk
# that listed each directory whole grew by 158 MB on the same directory.
MAX_GROWTH_KB = 16 * 1024

CHILD = r"""
import json, sys
from ossec_dfir.collectors.walk import Walk

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

before = status("VmRSS")
walk = Walk([sys.argv[1]])
n = sum(1 for _ in walk)
print(json.dumps({"files": n, "rss_before_kb": before, "hwm_kb": status("VmHWM"),
                  "summary": walk.summary()}))
"""


def test_a_directory_of_200k_entries_is_walked_in_bounded_memory():
    with public_dir() as base:
        flood = base / "flood"

        def plant() -> None:
            flood.mkdir()
            for i in range(FILES):
                (flood / f"{i:07d}").open("w").close()
        as_nobody(plant, timeout_s=120)
        child = subprocess.run([sys.executable, "-c", CHILD, str(flood)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                               check=False)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    result = json.loads(child.stdout)
    assert result["files"] == FILES
    growth = result["hwm_kb"] - result["rss_before_kb"]
    assert growth < MAX_GROWTH_KB, result
    print(f"walk of {FILES} entries: peak grew by {growth} kB")
