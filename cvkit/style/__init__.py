"""Neural style transfer: perceptual losses and Gatys et al.'s optimisation of one image.

:mod:`cvkit.style.losses` holds the Gram matrix, the content/style/TV terms and the VGG loss
network; :mod:`cvkit.style.gatys` optimises an image against them (``cvkit style``). The
feed-forward stylizer that learns one style (Johnson et al.) is the ``style`` training task.
"""
