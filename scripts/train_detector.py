"""Train, evaluate, save and export a detector.

``python scripts/train_detector.py --cfg configs/ssd.yaml`` is the command users run first.

A thin wrapper over ``cvkit train``; every option of that command works here.
"""

import sys

from cvkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
