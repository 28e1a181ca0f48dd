"""The estimator: preprocessing, attention blocks, network, quantile head/loss, checkpoints.

Imports only torch, numpy, scipy and safetensors (never metagen, zarr, accelerate, normflows).
"""
from model.network import MIEstimator, ModelConfig
from model.preprocess import Batch, prepare_batch

__all__ = ["MIEstimator", "ModelConfig", "Batch", "prepare_batch"]
