"""Models: the registry (:mod:`.registry`), the segmentation architectures (:mod:`.segmentation`) and
transfer learning by band name (:mod:`.transfer`)."""

from eoforge.models.registry import ModelFactory, create_model, list_encoders, list_models, register_model
from eoforge.models.transfer import adapt_conv_weight, cache_dir, fetch_weights, load_weights, read_weights

__all__ = [
    "ModelFactory",
    "adapt_conv_weight",
    "cache_dir",
    "create_model",
    "fetch_weights",
    "list_encoders",
    "list_models",
    "load_weights",
    "read_weights",
    "register_model",
]
