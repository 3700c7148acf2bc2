"""The reference loader of SEN12MS-CR, as its code does it, on a folder of GeoTIFFs.

A line-by-line port of UnCRtainTS ``data/dataLoader.py`` class ``SEN12MSCR`` (``get_paths``,
``__getitem__``, ``get_cloud_map``, ``process_MS``, ``process_SAR``) for the tests and the
benchmark: ``os.listdir`` + ``natsorted`` walks, ``str.replace`` path building, ``isfile``
pairing, substring split membership, rasterio reads and s2cloudless run on every sample. The
only liberty: the rule-based detector's two masks come from
``s2cube_conversion.clouds.rule_cloud`` / ``rule_shadow(literal=True)`` (the reference's
``util/detect_cloudshadow.py`` arithmetic, tested against it in ``test_clouds.py``).
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np

from s2cube import sen12mscr as cr


def natsorted(items):
    """natsort's default order (digit runs compared as integers)."""
    return sorted(items, key=lambda s: tuple(int(t) if t.isdigit() else t
                                             for t in re.split(r"(\d+)", s)))


def split_lists() -> dict[str, list[str]]:
    """The reference's ``self.splits`` entries, e.g. ``'ROIs1868_summer_s1/s1_73'``."""
    out = {}
    for split, scenes in cr.SPLIT_SCENES.items():
        items = []
        for s in scenes:
            collection, sid = cr.parse_scene(s)
            items.append(f"{collection}_{cr.SEASONS[collection]}_s1/s1_{sid}")
        out[split] = items
    out["all"] = out["train"] + out["test"] + out["val"]
    return out


def rescale(img, old_min, old_max):
    return (img - old_min) / (old_max - old_min)


def process_ms(img, method):
    if method == "default":
        img = np.clip(img, 0, 10000)
        img = rescale(img, 0, 10000)
    if method == "resnet":
        img = np.clip(img, 0, 10000)
        img /= 2000
    return np.nan_to_num(img)


def process_sar(img, method):
    if method == "default":
        img = np.clip(img, -25, 0)
        img = rescale(img, -25, 0)
    if method == "resnet":
        lo, hi = [-25.0, -32.5], [0, 0]
        img = np.concatenate([(2 * (np.clip(img[0], lo[0], hi[0]) - lo[0]) / (hi[0] - lo[0]))[None],
                              (2 * (np.clip(img[1], lo[1], hi[1]) - lo[1]) / (hi[1] - lo[1]))[None]],
                             axis=0)
    return np.nan_to_num(img)


def get_cloud_map(img, detector, instance=None):
    from scipy.ndimage import gaussian_filter

    from s2cube_conversion.clouds import rule_cloud, rule_shadow

    img = np.clip(img, 0, 10000)
    mask = np.ones((img.shape[-1], img.shape[-1]))
    if not (img.mean() < 1e-5 and img.std() < 1e-5):
        if detector == "cloud_cloudshadow_mask":
            mask = (rule_cloud(img) | rule_shadow(img, literal=True)).astype(np.float32)
        elif detector == "s2cloudless_map":
            mask = instance.get_cloud_probability_maps(np.moveaxis(img / 10000, 0, -1)[None, ...])[0, ...]
            mask[mask < 0.5] = 0
            mask = gaussian_filter(mask, sigma=2)
        elif detector == "s2cloudless_mask":
            mask = instance.get_cloud_masks(np.moveaxis(img / 10000, 0, -1)[None, ...])[0, ...]
    else:
        warnings.warn("Encountered a blank sample, defaulting to cloudy mask.", stacklevel=2)
    return mask.astype(np.float32)


class ReferenceSEN12MSCR:
    """``SEN12MSCR(root, split, region='all', cloud_masks, sample_type='pretrain', rescale_method)``."""

    def __init__(self, root, split="all", cloud_masks="s2cloudless_mask",
                 rescale_method="default"):
        self.root_dir = str(root)
        self.splits = split_lists()
        self.split = split
        self.cloud_masks = cloud_masks
        self.method = rescale_method
        self.cloud_detector = None
        if cloud_masks in ("s2cloudless_map", "s2cloudless_mask"):
            from s2cloudless import S2PixelCloudDetector

            self.cloud_detector = S2PixelCloudDetector(threshold=0.4, all_bands=True,
                                                       average_over=4, dilation_size=2)
        self.paths = self.get_paths()

    def get_paths(self):
        paths = []
        seeds_s1 = natsorted([d for d in os.listdir(self.root_dir) if "_s1" in d])
        for seed in seeds_s1:
            rois_s1 = natsorted(os.listdir(os.path.join(self.root_dir, seed)))
            for roi in rois_s1:
                roi_dir = os.path.join(self.root_dir, seed, roi)
                paths_s1 = natsorted([os.path.join(roi_dir, p) for p in os.listdir(roi_dir)])
                paths_s2 = [p.replace("/s1", "/s2").replace("_s1", "_s2") for p in paths_s1]
                paths_cl = [p.replace("/s1", "/s2_cloudy").replace("_s1", "_s2_cloudy")
                            for p in paths_s1]
                for pdx, _ in enumerate(paths_s1):
                    if not all([os.path.isfile(paths_s1[pdx]), os.path.isfile(paths_s2[pdx]),
                                os.path.isfile(paths_cl[pdx])]):
                        continue
                    if not any(r in paths_s1[pdx] for r in self.splits[self.split]):
                        continue
                    paths.append({"S1": paths_s1[pdx], "S2": paths_s2[pdx],
                                  "S2_cloudy": paths_cl[pdx]})
        return paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, pdx):
        import rasterio

        with rasterio.open(os.path.join(self.root_dir, self.paths[pdx]["S1"])) as f:
            s1 = process_sar(f.read().astype(np.float32), self.method)
        with rasterio.open(os.path.join(self.root_dir, self.paths[pdx]["S2"])) as f:
            coord = list(f.bounds)
            s2 = f.read().astype(np.float32)
        with rasterio.open(os.path.join(self.root_dir, self.paths[pdx]["S2_cloudy"])) as f:
            s2_cloudy = f.read().astype(np.float32)
        mask = None if not self.cloud_masks else get_cloud_map(s2_cloudy, self.cloud_masks,
                                                                self.cloud_detector)
        return {"input": {"S1": s1, "S2": process_ms(s2_cloudy, self.method), "masks": mask,
                          "coverage": np.mean(mask),
                          "S1 path": os.path.join(self.root_dir, self.paths[pdx]["S1"]),
                          "S2 path": os.path.join(self.root_dir, self.paths[pdx]["S2_cloudy"]),
                          "coord": coord},
                "target": {"S2": process_ms(s2, self.method),
                           "S2 path": os.path.join(self.root_dir, self.paths[pdx]["S2"]),
                           "coord": coord}}
