"""The training augmentation of `training.data.Augment`, run batched on the GPU over a dataset held there.

On the GPU machine the PIL augmentation in DataLoader workers, not the model, limits training speed: every
sample is upscaled on the CPU (up to 3x) before it is cropped. Here the whole split lives on the GPU as uint8
(CamVid train: 367 x 360x480x3 = 190 MB) and each batch is cut with one ``grid_sample``: random scale with
aspect jitter, random crop (padding: black image, ignore label), horizontal flip, then brightness / contrast /
saturation jitter -- the same distributions as ``Augment``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.data import IGNORE, Augment, find_samples, load_pair


class GpuBatches:
    """Endless random batches ``(uint8 B x H x W x 3, uint8 B x H x W)`` from splits held on the GPU."""

    def __init__(self, root, splits: list[str], augment: Augment, batch: int, device: str, seed: int = 0):
        images, labels = [], []
        for split in splits:
            samples, lut = find_samples(root, split)
            for s in samples:
                image, label = load_pair(s, lut)
                images.append(np.asarray(image, dtype=np.uint8))
                labels.append(label)
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(f"GPU augmentation needs images of one size; found {sorted(shapes)[:3]}")
        self.images = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(np.stack(labels)).to(device)
        self.augment, self.batch, self.device = augment, batch, device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return self.images.shape[0]

    def _uniform(self, lo: float, hi: float, n: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.gen, device=self.device)

    def _indices(self) -> torch.Tensor:
        while self._order.numel() < self.batch:  # a fresh permutation per epoch, as shuffle=True
            perm = torch.randperm(len(self), generator=self.gen, device=self.device)
            self._order = torch.cat([self._order, perm])
        idx, self._order = self._order[: self.batch], self._order[self.batch:]
        return idx

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, n = self.augment, self.batch
        idx = self._indices()
        _, _, H, W = self.images.shape
        ch, cw = a.crop
        s = self._uniform(*a.scale, n)
        asp = self._uniform(*a.aspect, n)
        w = (W * s * asp.sqrt()).round().clamp(min=1)  # scaled image size, as Augment
        h = (H * s / asp.sqrt()).round().clamp(min=1)
        x0 = (torch.rand(n, generator=self.gen, device=self.device) * ((w - cw).clamp(min=0) + 1)).floor()
        y0 = (torch.rand(n, generator=self.gen, device=self.device) * ((h - ch).clamp(min=0) + 1)).floor()
        # Output pixel j samples scaled pixel x0 + j, i.e. normalised source x = 2 (x0 + j + 0.5) / w - 1
        # (align_corners=False); beyond the scaled image the sample falls outside [-1, 1] and pads.
        j = torch.arange(cw, device=self.device) + 0.5
        i = torch.arange(ch, device=self.device) + 0.5
        gx = 2 * (x0[:, None] + j) / w[:, None] - 1
        gy = 2 * (y0[:, None] + i) / h[:, None] - 1
        flip = torch.rand(n, generator=self.gen, device=self.device) < 0.5
        gx = torch.where(flip[:, None], gx.flip(1), gx)
        # A flipped crop is the mirror of the unflipped one; padding sits right/bottom before the flip, as Augment.
        grid = torch.stack([gx[:, None, :].expand(n, ch, cw), gy[:, :, None].expand(n, ch, cw)], dim=-1)
        img = F.grid_sample(self.images[idx].float(), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        lab = F.grid_sample(self.labels[idx, None].float() + 1, grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[:, 0]
        lab = torch.where(lab < 0.5, torch.full_like(lab, IGNORE + 1), lab) - 1
        if a.jitter:
            lo, hi = 1 - a.jitter, 1 + a.jitter
            img = img * self._uniform(lo, hi, n).view(n, 1, 1, 1)  # brightness
            mean = img.mean(dim=(1, 2, 3), keepdim=True)
            img = (img - mean) * self._uniform(lo, hi, n).view(n, 1, 1, 1) + mean  # contrast
            grey = img.mean(dim=1, keepdim=True)
            img = (img - grey) * self._uniform(lo, hi, n).view(n, 1, 1, 1) + grey  # saturation
        img = img.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return img, lab.to(torch.uint8)
