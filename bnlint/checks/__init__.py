"""One check per rule; importing this package registers them all."""

from bnlint.checks import (  # noqa: F401
    bn001_bn_after_activation,
    bn002_dropout_before_bn,
    bn003_bias_before_bn,
    bn004_unfolded_inference_bn,
    bn005_noop_dropout,
    bn006_bn_in_training_mode,
    bn007_degenerate_bn_statistics,
    bn008_consecutive_bn,
    bn009_activation_before_maxpool,
)
