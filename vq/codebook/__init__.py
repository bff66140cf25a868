"""vq.codebook — the shared codebook core (k-means, product/residual/additive VQ, FSQ,
lattices, SimVQ, metrics). Every family speaks the :class:`Codec` protocol."""
from vq.codebook.additive import AdditiveVQ
from vq.codebook.fsq import FSQ
from vq.codebook.kmeans import KMeans, assign, assign_excluding
from vq.codebook.lattice import E8, E8P, PVQ
from vq.codebook.product import ProductVQ
from vq.codebook.checks import check_codes, check_vectors, check_weights
from vq.codebook.protocol import Codec, load_codec, save_codec
from vq.codebook.residual import ResidualVQ
from vq.codebook.simvq import SimVQCodebook
from vq.codebook import metrics

__all__ = [
    "E8",
    "E8P",
    "FSQ",
    "PVQ",
    "SimVQCodebook",
    "metrics",
    "AdditiveVQ",
    "Codec",
    "KMeans",
    "ProductVQ",
    "ResidualVQ",
    "assign",
    "assign_excluding",
    "check_codes",
    "check_vectors",
    "check_weights",
    "load_codec",
    "save_codec",
]
