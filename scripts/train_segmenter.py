"""Train, evaluate and save a semantic segmenter (FCN).

``python scripts/train_segmenter.py --cfg configs/fcn.yaml`` trains FCN-8s on the built-in
synthetic shapes dataset and reports mIoU.

A thin wrapper over ``cvkit train``; every option of that command works here.
"""

import sys

from cvkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
