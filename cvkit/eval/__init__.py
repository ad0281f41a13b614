"""Evaluation metrics: COCO box mAP (:mod:`cvkit.eval.coco`) and segmentation scores."""
