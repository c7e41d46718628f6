"""FVD and KVD as DIGAN reports them: our I3D, float64 distances, the official protocol.

    from digan.metrics import load_i3d, i3d_features, frechet_distance, kernel_distance
"""
from .distances import frechet_distance, kernel_distance
from .i3d import I3DWeightsError, InceptionI3d, file_sha256, i3d_features, load_i3d, preprocess

__all__ = ["I3DWeightsError", "InceptionI3d", "file_sha256", "frechet_distance", "i3d_features",
           "kernel_distance", "load_i3d", "preprocess"]
