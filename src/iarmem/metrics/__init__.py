"""Image quality from any feature extractor: FID, KID, precision / recall, and the sample sets they score."""

from iarmem.metrics.fid import KID, fid, frechet_distance, gaussian_stats, kid
from iarmem.metrics.prdc import PRDC, prdc
from iarmem.metrics.quality import Reference, evaluate_model, quality_scores, reference_features, reference_ids
from iarmem.metrics.sampling import (
    SamplingSettings,
    balanced_labels,
    default_sampling,
    iter_samples,
    load_npz,
    npz_writer,
    sample_images,
    save_npz,
)

__all__ = [
    "KID", "PRDC", "Reference", "SamplingSettings", "balanced_labels", "default_sampling", "evaluate_model", "fid",
    "frechet_distance", "gaussian_stats", "iter_samples", "kid", "load_npz", "npz_writer", "prdc",
    "quality_scores", "reference_features", "reference_ids", "sample_images", "save_npz",
]
