"""Models: backbones (LeNet → ResNet), classification, detection and segmentation heads.

``cvkit.models.build.build_model(config, num_classes)`` builds any registered model;
``cvkit.models.backbones.create_backbone`` builds a feature extractor.
"""
