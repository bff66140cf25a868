"""vq.codebook — the shared codebook core (k-means, product/residual/additive VQ, FSQ,
lattices, SimVQ, metrics). Every family speaks the :class:`Codec` protocol."""
from vq.codebook.additive import AdditiveVQ
from vq.codebook.kmeans import KMeans, assign
from vq.codebook.product import ProductVQ
from vq.codebook.protocol import Codec, check_codes, check_vectors, check_weights, load_codec, save_codec
from vq.codebook.residual import ResidualVQ

__all__ = [
    "AdditiveVQ",
    "Codec",
    "KMeans",
    "ProductVQ",
    "ResidualVQ",
    "assign",
    "check_codes",
    "check_vectors",
    "check_weights",
    "load_codec",
    "save_codec",
]
