"""Runs a Python script while recording every path this process writes (used by tests/test_scale_out.py).

```
python tests/trace_writes.py RECORD_PREFIX script.py [script args...]
accelerate launch ... tests/trace_writes.py RECORD_PREFIX script.py [script args...]
```

At exit, `RECORD_PREFIX.rank<RANK>.json` lists the absolute paths the process opened for writing, created as
directories or renamed to (Python audit events), plus what `torch.save` and `safetensors.torch.save_file` wrote
(their writers bypass Python's `open`). Patched before the script imports transformers, which binds `save_file` at
import time.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def _opened_for_writing(mode, flags) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def main() -> None:
    record, script, *args = sys.argv[1:]
    written: set[str] = set()

    def add(path) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            written.add(os.path.abspath(os.fsdecode(path)))

    def audit(event: str, event_args: tuple) -> None:
        if event == "open" and _opened_for_writing(event_args[1], event_args[2]):
            add(event_args[0])
        elif event == "os.mkdir":
            add(event_args[0])
        elif event in ("os.rename", "os.replace"):
            add(event_args[1])

    import safetensors.torch
    import torch

    def traced(save, position):
        def wrapper(*a, **k):
            add(a[position] if len(a) > position else k.get("filename", k.get("f")))
            return save(*a, **k)

        return wrapper

    torch.save = traced(torch.save, 1)
    safetensors.torch.save_file = traced(safetensors.torch.save_file, 1)

    def dump() -> None:
        paths = sorted(written)
        with open(f"{record}.rank{os.environ.get('RANK', '0')}.json", "w") as handle:
            json.dump(paths, handle, indent=1)

    atexit.register(dump)
    sys.addaudithook(audit)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
