"""Dataset formats on disk (COCO JSON, YOLO txt + data yaml, Pascal VOC) and their detection.

:func:`cvkit.data.formats.detect.load_records` reads any of them from the one way a dataset is
named everywhere: a path (plus ``images`` for COCO and ``split`` for YOLO/VOC).
"""
