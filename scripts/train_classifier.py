"""Train an image classifier and draw its confusion matrix.

``python scripts/train_classifier.py --cfg configs/classify_resnet.yaml`` trains a tiny
ResNet-18 on crops of the built-in synthetic shapes and reports top-1 accuracy; the run folder
gets ``plots/confusion_matrix.png``. Every option of ``cvkit train`` works here.
"""

import sys

from cvkit.cli import EXIT_USAGE, build_parser
from cvkit.engine.tasks.classify import train_and_report
from cvkit.errors import CvkitError

if __name__ == "__main__":
    arguments = build_parser().parse_args(["train", *sys.argv[1:]])
    try:
        sys.exit(train_and_report(arguments))
    except CvkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
