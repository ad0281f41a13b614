"""Train an image classifier and draw its confusion matrix.

``python scripts/train_classifier.py --cfg configs/classify_resnet.yaml`` trains a tiny
ResNet-18 on crops of the built-in synthetic shapes and reports top-1 accuracy; the run folder
gets ``plots/confusion_matrix.png``. Every option of ``cvkit train`` works here.
"""

import sys

from cvkit.engine.tasks.classify import train_and_report

if __name__ == "__main__":
    sys.exit(train_and_report(sys.argv[1:]))
