"""The Hugging Face tests (tests/models/test_hf.py, test_export.py) against each supported transformers release, each in a throwaway
venv (the local CPU torch, that transformers, miras from this checkout on PYTHONPATH), and a table of the results.

    python3 benchmarks/hf_versions.py                       # the default releases below
    python3 benchmarks/hf_versions.py 4.56.2 5.25.0 --keep  # chosen ones; --keep leaves the venvs in .venv-hf-*

Not part of CI (a few minutes per release). The table goes in docs/models.md.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASES = ["4.56.2", "4.57.6", "5.0.0", "5.23.0", "5.24.0", "5.25.0"]
TORCH = "torch==2.13.0"
EXTRA = ["numpy", "safetensors", "tokenizers", "pytest", "pytest-xdist"]
TESTS = ["tests/models/test_hf.py", "tests/models/test_export.py"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def check(release: str, keep: bool) -> dict:
    venv = ROOT / f".venv-hf-{release}"
    shutil.rmtree(venv, ignore_errors=True)
    py = str(venv / "bin" / "python")
    start = time.time()
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [py, "-m", "pip", "install", "-q", TORCH],
             [py, "-m", "pip", "install", "-q", f"transformers=={release}", *EXTRA]]
    for cmd in steps:
        done = run(cmd)
        if done.returncode:
            return {"release": release, "result": f"install failed: {done.stderr.strip().splitlines()[-1:]}"}
    installed = run([py, "-c", "import transformers, torch; print(transformers.__version__, torch.__version__)"])
    setup_s = time.time() - start
    start = time.time()
    tests = run([py, "-m", "pytest", *TESTS, "-o", "addopts=", "-q", "-n", "2", "-p", "no:cacheprovider"],
                cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    summary = [line for line in tests.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    if not keep:
        shutil.rmtree(venv, ignore_errors=True)
    return {"release": release, "installed": installed.stdout.strip(), "result": summary[-1] if summary else
            tests.stdout[-300:], "setup_s": setup_s, "test_s": time.time() - start, "rc": tests.returncode}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("releases", nargs="*", default=RELEASES)
    parser.add_argument("--keep", action="store_true", help="leave the venvs (.venv-hf-RELEASE) in place")
    args = parser.parse_args(argv)
    rows = []
    for release in args.releases:
        row = check(release, args.keep)
        rows.append(row)
        print(f"{release}: {row['result']}", file=sys.stderr, flush=True)
    print(f"| transformers | torch | {' + '.join(TESTS)} | set-up s | tests s |")
    print("|---|---|---|---|---|")
    for row in rows:
        torch_version = row.get("installed", " ?").split(" ")[-1]
        print(f"| {row['release']} | {torch_version} | {row['result'].strip('= ')} | "
              f"{row.get('setup_s', 0):.0f} | {row.get('test_s', 0):.0f} |")
    sys.exit(any(row.get("rc", 1) for row in rows))


if __name__ == "__main__":
    main()
