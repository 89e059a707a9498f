"""DrQ's image augmentation (Kostrikov et al. 2020) as in Dopamine's Atari-100k agent (DrQ(eps)).

Each sampled state and next state (uint8 [B, stack, H, W]) is, per sample, with every frame of its stack
treated alike:
    1. shifted by (dy, dx), each drawn uniformly from {-pad, ..., pad - 1}: pad the image by `pad` pixels
       replicating its edges, then crop H x W at offsets in [0, 2 pad). Dopamine's `jax.random.randint(0,
       2 pad)` excludes the upper bound, so the shift is one pixel short of symmetric; we keep that. Edge
       padding plus a crop is the same as clamping the source coordinates: out[i, j] = x[clip(i + dy),
       clip(j + dx)], which is what we compute (gathers, no padded copy);
    2. scaled to [0, 1] and multiplied by 1 + intensity * clip(N(0, 1), -2, 2) (one draw per sample;
       Schwarzer et al.'s intensity augmentation, part of Dopamine's `drq_image_augmentation`).
States and next states get independent draws. The output is float32 in [0, 1] scale, which the networks take
as it is (they divide uint8 input by 255 themselves).

Everything runs on the training device from one `torch.Generator` of that device, with static shapes and no
host synchronisation, so the trainer registers the generator with its CUDA graphs and a replayed graph draws
fresh shifts and noise every step.
"""

from __future__ import annotations

import dataclasses

import torch

from agents.replay import Batch


def shift_stacks(obs: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """obs [B, S, H, W] with sample b's stack shifted by (dy[b], dx[b]): out[b, :, i, j] = obs[b, :, clip(i +
    dy[b]), clip(j + dx[b])], i.e. edge padding and a crop."""
    b, s, h, w = obs.shape
    rows = (torch.arange(h, device=obs.device) + dy[:, None]).clamp_(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=obs.device) + dx[:, None]).clamp_(0, w - 1)  # [B, W]
    out = obs.gather(2, rows[:, None, :, None].expand(b, s, h, w))  # rows, then columns: two plain gathers
    return out.gather(3, cols[:, None, None, :].expand(b, s, h, w))


def random_shift(obs: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """obs [B, S, H, W], each sample's stack shifted by its own (dy, dx), each uniform in {-pad, ..., pad - 1}."""
    dy, dx = torch.randint(0, 2 * pad, (2, obs.shape[0]), generator=generator, device=obs.device) - pad
    return shift_stacks(obs, dy, dx)


def intensity(x: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """x [B, ...] float times 1 + scale * clip(N(0, 1), -2, 2), one draw per sample."""
    noise = torch.randn((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device)
    return x * (1.0 + scale * noise.clamp(-2.0, 2.0))


def drq_augment(obs: torch.Tensor, pad: int, intensity_scale: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 frames [B, S, H, W] -> shifted, intensity-scaled float32 frames in [0, 1] scale."""
    x = random_shift(obs, pad, generator).float().div_(255.0)
    return intensity(x, intensity_scale, generator) if intensity_scale > 0 else x


class DrQAugmentation:
    """Augments the states and next states of replay batches on `device`, from a generator of its own."""

    def __init__(self, pad: int, intensity_scale: float, device: torch.device, seed: int):
        if pad < 1 or intensity_scale < 0:
            raise ValueError(f"augmentation needs pad >= 1 and intensity >= 0, got {pad}, {intensity_scale}")
        self.pad, self.intensity_scale = pad, intensity_scale
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, batch: Batch) -> Batch:
        obs = drq_augment(batch.obs, self.pad, self.intensity_scale, self.generator)
        next_obs = drq_augment(batch.next_obs, self.pad, self.intensity_scale, self.generator)
        return dataclasses.replace(batch, obs=obs, next_obs=next_obs)
