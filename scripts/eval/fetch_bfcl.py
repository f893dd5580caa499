#!/usr/bin/env python3
"""Fetch BFCL's single-turn AST data (questions + possible answers) from PyPI.

The bfcl-eval wheel ships the benchmark data and BFCL's own checker. It is downloaded
into a cache directory (never committed) and extracted there:

  CACHE/bfcl_eval-<version>/...            the unpacked wheel (checker source too)
  CACHE/data/<file>.json                   question files
  CACHE/data/possible_answer/<file>.json   ground truth

Usage: fetch_bfcl.py [CACHE_DIR]   (default: target/bfcl-cache)
Prints the data directory on success; exits non-zero with a message otherwise.
Re-running with a populated cache does not touch the network.
"""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

VERSION = "2026.3.23"
CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple"]


def main():
    cache = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/bfcl-cache")
    data = os.path.join(cache, "data")
    pkg = os.path.join(cache, f"bfcl_eval-{VERSION}")
    want = [os.path.join(data, f"BFCL_v4_{c}.json") for c in CATEGORIES]
    want += [os.path.join(data, "possible_answer", f"BFCL_v4_{c}.json") for c in CATEGORIES]
    if all(os.path.isfile(p) for p in want) and os.path.isdir(os.path.join(pkg, "bfcl_eval")):
        print(data)
        return 0
    os.makedirs(cache, exist_ok=True)
    wheels = glob.glob(os.path.join(cache, f"bfcl_eval-{VERSION}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", f"bfcl-eval=={VERSION}", "--no-deps",
               "--disable-pip-version-check", "-q", "-d", cache]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(f"pip download bfcl-eval=={VERSION} failed:\n{r.stdout}\n{r.stderr}\n")
            return 2
        wheels = glob.glob(os.path.join(cache, f"bfcl_eval-{VERSION}-*.whl"))
    if not wheels:
        sys.stderr.write(f"no bfcl_eval wheel in {cache} after pip download\n")
        return 2
    tmp = pkg + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(tmp)
    shutil.rmtree(pkg, ignore_errors=True)
    os.replace(tmp, pkg)
    src = os.path.join(pkg, "bfcl_eval", "data")
    os.makedirs(os.path.join(data, "possible_answer"), exist_ok=True)
    for c in CATEGORIES:
        for sub in ["", "possible_answer"]:
            s = os.path.join(src, sub, f"BFCL_v4_{c}.json")
            if not os.path.isfile(s):
                sys.stderr.write(f"bfcl-eval {VERSION} has no {s}\n")
                return 3
            shutil.copyfile(s, os.path.join(data, sub, f"BFCL_v4_{c}.json"))
    print(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
