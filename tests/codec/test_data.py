import numpy as np
import pytest
import torch
from PIL import Image

from codec.data import CropBatches, all_images, check_images, crop_to, list_images, load_image, pad_to_multiple
from metaopt.errors import UserError
from tests.conftest import write_image


def test_builtin_splits_are_disjoint_photos():
    splits = {s: list_images(None, s) for s in ("meta", "metaval", "train", "test")}
    names = [p.name for paths in splits.values() for p in paths]
    assert len(names) == len(set(names)) == 12
    assert all(p.is_file() for paths in splits.values() for p in paths)
    assert all(load_image(paths[0]).shape[0] == 3 for paths in splits.values())


def test_image_folder_and_flat_layouts(image_folder, tmp_path):
    assert [p.name for p in list_images(image_folder, "train")] == ["a.png", "b.jpg", "c.png"]
    assert [p.name for p in list_images(image_folder, "test")] == ["d.png"]
    assert list_images(image_folder, "meta") == list_images(image_folder, "train")  # no meta/: use train
    assert list_images(image_folder, "metaval") == list_images(image_folder, "test")  # no metaval/: use test
    (image_folder / "metaval").mkdir()
    write_image(image_folder / "metaval" / "e.png", 64, 64, seed=5)
    assert [p.name for p in list_images(image_folder, "metaval")] == ["e.png"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        write_image(flat / f"{i:02d}.png", 20, 20, seed=i)
    train, test = list_images(flat, "train"), list_images(flat, "test")
    assert len(test) == 1 and len(train) == 11 and test[0].name == "11.png"
    # Evaluation takes every image, whatever the layout.
    assert [p.name for p in all_images(image_folder)] == ["e.png", "d.png", "a.png", "b.jpg", "c.png"]
    assert len(all_images(flat)) == 12 and all_images(None) == list_images(None, "test")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_any_mode_loads_as_rgb_in_unit_range(tmp_path, mode):
    path = write_image(tmp_path / ("x.tif" if mode == "CMYK" else "x.png"), 24, 30, mode=mode)
    x = load_image(path)
    assert x.shape == (3, 24, 30) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.2  # 16-bit scaled by depth, not clipped to white


def test_sixteen_bit_uses_full_depth(tmp_path):
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png")[0, 0, 0].item() == pytest.approx(0.5, abs=0.01)


def test_unreadable_and_missing_images_raise_user_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("empty.png", "text.jpg", "missing.png"):
        with pytest.raises(UserError):
            load_image(tmp_path / name)


def test_check_images_names_the_first_bad_file_without_decoding(tmp_path, image_folder):
    from tests.codec.test_hostile_images import png_claiming

    good = all_images(image_folder)
    check_images(good)
    (tmp_path / "text.jpg").write_text("not an image")
    bad = [tmp_path / "text.jpg", tmp_path / "missing.png", png_claiming(tmp_path / "bomb.png", 100_000, 100_000),
           png_claiming(tmp_path / "zero.png", 0, 5)]
    for path in bad:
        with pytest.raises(UserError, match=str(path)):
            check_images([*good, path])
    # A truncated pixel stream is a decoding matter (found when loaded): the header check stays fast.
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[1].read_bytes()[:200])
    check_images([truncated])


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="not found"):
        list_images(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        list_images(tmp_path / "empty", "train")


def test_crop_batches_are_deterministic_per_step_and_handle_small_images(image_folder):
    paths = list_images(image_folder, "train")
    batches = CropBatches(paths, crop=128, batch_size=3, seed=7)  # every image is smaller than 128
    a, b = batches[5], CropBatches(paths, crop=128, batch_size=3, seed=7)[5]
    assert a.shape == (3, 3, 128, 128) and torch.equal(a, b)
    assert not torch.equal(batches[5], batches[6])
    assert not torch.equal(a, CropBatches(paths, crop=128, batch_size=3, seed=8)[5])


def test_pad_and_crop_back():
    x = torch.rand(1, 3, 37, 50)
    padded, size = pad_to_multiple(x, 64)
    assert padded.shape[-2:] == (64, 64) and size == (37, 50)
    assert torch.equal(crop_to(padded, size), x)
