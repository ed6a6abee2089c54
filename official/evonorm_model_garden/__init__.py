"""What this project's Model Garden packages share (the layer between
``evonorm_layers`` and the task packages ``evonorm_vision``,
``evonorm_detection`` and ``evonorm_gan``, which never import each other):

* the norm-activation config and norm sites (``norm_activation``,
  ``norm_sites``), and the backbones built with them (``backbones``);
* experiment loading and checking, strategies (``experiments``), training
  with a progress bar (``run_training``) and SavedModel export (``export``);
* the entry points' one-line errors (``cli``).

Importing the package imports none of them, so ``cli`` stays cheap.
"""
