"""Summarize a py-spy raw (collapsed) profile: top functions by own and by inclusive samples.

py-spy record -p PID -d 10 -r 200 -f raw -o profile.txt --nonblocking
python bench/profile_top.py profile.txt [N]
"""

from __future__ import annotations

import collections
import sys


def main(path: str, top: int = 25) -> None:
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        n = int(count)
        frames = stack.split(";")[1:]  # first entry is the thread
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples")
    print("\nown time:")
    for frame, n in own.most_common(top):
        print(f"{n / total:6.1%}  {frame}")
    print("\ninclusive time:")
    for frame, n in inclusive.most_common(top):
        print(f"{n / total:6.1%}  {frame}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
