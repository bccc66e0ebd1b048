"""Training, evaluation and prediction commands built on timm's and torch's components."""

from sret.train.losses import KDLoss, build_train_loss

__all__ = ["KDLoss", "build_train_loss"]
