"""Shared fixtures of the tokenizer tests."""
import numpy as np
import pytest
from PIL import Image

from vq_tokenizers.data import builtin_images


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    for name, im in builtin_images(("camera", "coffee", "chelsea")).items():
        Image.fromarray((im[:96, :96] * 255).astype(np.uint8)).save(d / f"{name}.png")
    return d
