"""Training pipeline shared by the learned methods.

Generic pieces: :mod:`.data` (sharp photographs, sharpness filter, synthetic
defocus, patch pairs), :mod:`.loop` (seeded, resumable training loop),
:mod:`.checkpoints` (checkpoints, released weights with sha256 manifests),
:mod:`.model_card`. Method-specific recipes: :mod:`.liu2017`. Command line:
``napari-fusion train <model>`` (:mod:`.cli`).
"""
