"""Geometry estimators (depth / normals) for SSD's baselines: one protocol, explicit mapping. (Called
`steinsplat.estimators` before; that path still imports. "Estimators" alone here means SDS, VSD and SSD.)

    from steinsplat.geometry import ESTIMATORS
    est = ESTIMATORS["shapeworld"].from_pretrained()        # steinsplat/assets/shapeworld/estimator
    est = ESTIMATORS["transformers"].from_pretrained("depth-anything/Depth-Anything-V2-Small-hf")
"""

from .base import (
    EstimatorUnavailableError, GeometryEstimator, GeometryPrediction, disparity_to_depth, normals_from_depth,
)
from .shapeworld import ShapeWorldEstimatorAdapter
from .transformers_depth import TransformersDepthConfig, TransformersDepthEstimator

ESTIMATORS = {
    "shapeworld": ShapeWorldEstimatorAdapter,
    "transformers": TransformersDepthEstimator,
}

__all__ = [
    "ESTIMATORS", "GeometryEstimator", "GeometryPrediction", "EstimatorUnavailableError", "normals_from_depth",
    "disparity_to_depth", "ShapeWorldEstimatorAdapter", "TransformersDepthEstimator", "TransformersDepthConfig",
]
