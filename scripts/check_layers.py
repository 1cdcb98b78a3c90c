#!/usr/bin/env python3
"""Checks kvault's arrows: a room (folder of src/, or bench/) includes only rooms below it.

Ranks (docs/ARCHITECTURE.md draws them): a file may include its own room and rooms of a
strictly lower rank; two rooms of the same rank never include each other. Also: only the
LibTorch rooms include LibTorch, and nothing under src/ or bench/ includes tests/.
Exit status 1 with one line per violation; run by CTest (layers_test).
"""
import os
import re
import sys

RANK = {
    "store": 0,                                  # kvault::Store, Env, formats (include/kvault too)
    "gguf": 1, "gpu": 1, "planner": 1, "charts": 1, "local_cluster": 1,
    "http": 1,                                   # the event-driven HTTP/1.1 server (Boost.Beast)
    "metrics": 2,
    "tokenizer": 3, "daemon": 3, "replay": 3,
    "engine": 4,                                 # LibTorch from here up
    "models": 5,
    "openai": 6,
    "apps": 7,
    "bench": 8,
}
TORCH_ROOMS = {"engine", "models", "openai", "apps", "bench"}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')


def room_of(rel):
    parts = rel.split("/")
    if parts[0] == "bench":
        return "bench"
    if parts[0] == "src" and len(parts) > 2:
        return parts[1]
    return None


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bad = []
    for top in ("src", "bench"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if not name.endswith((".h", ".cc", ".cu", ".inc")):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                room = room_of(rel)
                if room not in RANK:
                    bad.append(f"{rel}: room '{room}' has no rank in scripts/check_layers.py")
                    continue
                with open(path, encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        inc = m.group(1)
                        where = f"{rel}:{lineno}: {room} includes {inc}"
                        if inc.startswith("tests/") or inc in ("test_util.h", "fault_env.h"):
                            bad.append(where + " (tests/ is above everything)")
                        elif inc.split("/")[0] in ("torch", "ATen", "c10") and room not in TORCH_ROOMS:
                            bad.append(where + " (LibTorch outside the engine's rooms)")
                        elif "/" in inc and inc.split("/")[0] in RANK:
                            target = inc.split("/")[0]
                            if target != room and RANK[target] >= RANK[room]:
                                bad.append(where + f" (rank {RANK[target]} >= {RANK[room]})")
    for line in bad:
        print(line)
    print(f"check_layers: {len(bad)} violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
