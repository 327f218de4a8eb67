"""Stable Diffusion 1.x / 2.x folders (diffusers' layout, safetensors) loaded into this project's own modules.

`folder` reads a folder and checks every tensor onto a parameter (named errors, nothing half-loaded); one module per
component maps its config to module options and its tensor names and layouts to Flax parameters:
`text_encoder` (transformers' CLIPTextModel -> models.clip.TextTower). torch is never imported.
"""
from diffusion_jax.pretrained.folder import PretrainedError

__all__ = ["PretrainedError"]
