"""Shared fixtures: hermetic W&B (disabled unless a test opts in), one CPU thread, tiny image folders."""
import os

os.environ["WANDB_MODE"] = "disabled"  # before anything imports wandb
os.environ["WANDB_SILENT"] = "true"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """Every compiled step a test builds is a recompile of the same functions, with other weights baked into its
    guards; one pytest process would pass dynamo's recompile limit. Each test starts from an empty cache."""
    torch._dynamo.reset()


def write_image(path, h, w, mode="RGB", seed=0):
    """A smooth random image (compressible, like a photo) in the given Pillow mode."""
    rng = np.random.default_rng(seed)
    base = rng.random((h // 8 + 2, w // 8 + 2, 3))
    img = Image.fromarray((base * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    if mode == "I;16":
        arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(arr)
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """ImageFolder layout with a few small images of mixed modes and sizes."""
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    write_image(root / "train" / "a.png", 96, 128, seed=1)
    write_image(root / "train" / "b.jpg", 80, 70, seed=2)  # smaller than a 128 crop
    write_image(root / "train" / "c.png", 64, 64, mode="L", seed=3)
    write_image(root / "test" / "d.png", 72, 100, mode="RGBA", seed=4)
    return root
