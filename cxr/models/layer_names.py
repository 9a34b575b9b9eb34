"""Names of the classifier's layers: the contract that training, Grad-CAM and serving rely on.

image -> augmentation (absent without augmentation) -> backbone_input -> backbone -> head_pool
-> head_* -> predictions; GoogLeNet's training model adds the outputs aux_1 and aux_2.
A seed ensemble (train.members > 1) is image -> member_0, member_1, ... (each such a classifier)
-> predictions (their mean).
"""

INPUT = "image"
AUGMENTATION = "augmentation"
BACKBONE_INPUT = "backbone_input"
BACKBONE = "backbone"
# The pooled backbone features: where the frozen phase can cut the model (cached features).
FEATURES = "head_pool"
PREDICTIONS = "predictions"
GOOGLENET_AUX_OUTPUTS = ("aux_1", "aux_2")
MEMBER_PREFIX = "member_"  # member_0, member_1, ...: the classifiers a seed ensemble averages
